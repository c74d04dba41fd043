// The agent page's live part: follow /agents/{spoke}/{id}/events (server-sent events from
// the hub's watch) and update progress, state history and output. Text is only ever set
// with textContent, never parsed as HTML.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var MAX_OUTPUT = 256 * 1024;
  var shown = 0;
  var output = document.getElementById("output");
  var history = document.querySelector("#history tbody");
  var status = document.getElementById("stream-status");
  var progress = document.getElementById("progress");
  var progressText = document.getElementById("progress-text");
  var progressMessage = document.getElementById("progress-message");
  var CLASSES = {
    SUCCEEDED: "ok", FAILED: "bad", DEAD_LETTERED: "bad", RUNNING: "run", STARTING: "run",
    RETRYING: "warn", KILLED: "warn", TIMED_OUT: "warn", QUEUED: "idle"
  };

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }

  function badge(state) {
    var span = document.createElement("span");
    span.className = "badge " + (CLASSES[state] || "idle");
    span.dataset.state = state;
    span.textContent = state;
    return span;
  }

  function append(text, stderr) {
    var node = document.createElement("span");
    if (stderr) { node.className = "stderr"; }
    node.textContent = text;
    output.appendChild(node);
    shown += text.length;
    while (shown > MAX_OUTPUT && output.firstChild) {  // keep the newest output only
      shown -= output.firstChild.textContent.length;
      output.removeChild(output.firstChild);
    }
    output.scrollTop = output.scrollHeight;
  }

  function read(e) { return JSON.parse(e.data); }

  var source = new EventSource(live.dataset.events);
  source.onopen = function () { status.textContent = "live"; };
  source.onerror = function () { status.textContent = "reconnecting…"; };
  source.addEventListener("state", function (e) {
    var ev = read(e);
    var row = document.createElement("tr");
    cell(row, String(ev.seq), "num");
    cell(row, ev.time.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", ""), "small");
    cell(row, "").appendChild(badge(ev.state));
    cell(row, ev.reason, "muted small");
    history.appendChild(row);
    var holder = document.getElementById("state-badge");
    if (holder) { holder.replaceChildren(badge(ev.state)); }
    if (ev.final && window.htmx) { window.htmx.trigger(document.body, "agent-final"); }
  });
  source.addEventListener("progress", function (e) {
    var ev = read(e);
    progress.value = ev.percent;
    progressText.textContent = ev.percent + "%";
    progressMessage.textContent = ev.data;
  });
  source.addEventListener("stdout", function (e) { append(read(e).data, false); });
  source.addEventListener("stderr", function (e) { append(read(e).data, true); });
  source.addEventListener("dropped", function (e) {
    append("[" + read(e).data + " bytes of output not recorded]\n", true);
  });
  source.addEventListener("failure", function (e) {
    var ev = read(e);
    status.textContent = "watch failed: " + ev.message;
  });
  source.addEventListener("end", function () {
    source.close();  // the agent ended: EventSource would reconnect forever otherwise
    if (status.textContent !== "live" && status.textContent !== "connecting…") { return; }
    status.textContent = "ended";
  });
})();
