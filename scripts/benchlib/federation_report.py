"""The federation arm's part of docs/benchmarks.md: one section between two markers, kept
when the rest of the page is generated again, and its raw numbers in docs/bench/.

:func:`write` puts ``docs/bench/federation.json`` and the section in place (replacing the
old one, or before ``## Plots`` the first time); :func:`keep` carries the section (and any other
hand-kept section between markers) over into a page :mod:`benchlib.report` has just generated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

BEGIN = "<!-- federation:begin (scripts/bench --arms federation) -->"
END = "<!-- federation:end -->"
ANCHOR = "\n## Plots"
_BLOCK = re.compile(r"<!-- ([a-z0-9_-]+):begin[^>]*-->.*?<!-- \1:end -->\n?", re.DOTALL)


def notes(result: dict[str, Any]) -> str:
    """Why the figures are what they are: numbers from the run, causes from a py-spy
    profile of the hubd during 8 fan-outs and 100 selector spawns (2026-11-30) and the hub's
    own log."""
    s = result["sizes"]
    n = s["spokes"]
    fan = result["fanout"]
    cpu = fan["cpu"]
    per_call_ms = cpu["hub_cpu_s_per_op"] / n * 1000
    big = result["selector_spawn"]["big"]["latency"]["p50_ms"]
    solo = result["selector_spawn"]["solo"]["latency"]["p50_ms"]
    mem = result["memory"]["kb_per_spoke"]
    floor = result.get("floor")
    floor_kb = "the issue's 83 KB floor" + (
        f" and {floor['kb_per_spoke']:.1f} KB measured here" if floor else ""
    )
    floor_cpu = "12 % (the issue's)" + (f", {floor['cpu_pct']:.1f} % here" if floor else "")
    lines = [
        "### Why",
        "",
        f"- **Fan-out is bounded by the hub's one core.** The hubd spent "
        f"{cpu['hub_cpu_s_per_op']:.2f} s of CPU per {n:,}-spoke list, {per_call_ms:.2f} ms "
        "per spoke asked, so no list can finish in much under that even on an idle core; "
        "here the simulators and the client share the same cores (their CPU per call is "
        "above). Where the hub's time goes (py-spy, share of samples): about 30 % in gRPC's "
        "core polling thread (TLS and HTTP/2: every call to a connect-mode spoke is a new "
        "Serve stream, with its open, method, request, response and status messages), 19 % in "
        "the relay path (`FanOut._try`, `Relayer.call`: the signed relay, the check of the "
        "spoke's signed reply), 12 % serving the Serve streams (`hub/link_service.py`), about "
        "10 % creating asyncio tasks and futures, and 5 % in one Redis GET of the membership "
        "revision per relayed call (`Relayer.call` -> `SpokeRegistry.fresh` -> "
        "`MembershipStore.revision`).",
        "FANOUT",
        f"- **Memory: {mem:.1f} KB per spoke** against {floor_kb} of bare grpc.aio "
        "streams with TLS (gRPC's per-connection TLS and HTTP/2 buffers). The rest is the "
        "hub's Python state per session (its LinkSession with the outgoing queue, the "
        "control stream's handler and heartbeat reader tasks, the health record holding the "
        "last signed status, per-spoke metric series); not broken "
        "down per object. Four earlier full runs of 2026-11-30 measured 120.5, 120.7, 120.5 "
        f"and 121.3 KB, this one {mem:.1f} KB: steadily about at the target, not clearly "
        "under it.",
        f"- **Selector spawn grows with the federation** ({big:.0f} ms p50 over {n:,} spokes "
        f"against {solo:.0f} ms over one): the hub screens every spoke (labels, a policy "
        "check per spoke, health, capacity), then its placement claim script gets every "
        "candidate (four arguments each) to score in Redis. Both are linear in the spokes "
        "matching the selector; no target was set for it.",
        f"- **Heartbeats:** {result['idle']['cpu_pct']:.1f} % of one core against the "
        f"floor's {floor_cpu}. Where a heartbeat's time goes (py-spy of the hubd at idle, "
        "share of samples): the check of the spoke's signed status about 11 %, the health "
        "record, circuit and metric updates about 19 %, and the renewal of the spoke's "
        "session lease in the hub's Redis with that status (`LeaseKeeper.beat`, "
        "`hub/forward_hooks.py`: one Redis round trip per heartbeat, added with the "
        "several-hubds work on 2026-11-30 06:17) about 15 %; the rest is gRPC's polling "
        "thread and the event loop (the same shares in a second profile at 06:43). The two "
        "full runs before the lease measured 9.1 and 9.2 %, the three after it 14.7, 15.7 "
        "and 19.5 %: the lease costs about 5 points, and runs of the same code spread by "
        "several more, with other work on the machine using between a fifth and nine tenths "
        "of its cores.",
        "- **With 0 sessions** the hubd is not idle: its lease watcher "
        "(`hub/forward_watch.py`) reads the lease of every connect-mode spoke that has no "
        "session here every `link_lease_poll_s` (1 s), one Redis GET after another: "
        f"{n:,} per second, {result['baseline']['cpu_pct']:.1f} % of one core. It stops "
        "once the sessions are here, so it is not part of the idle figure.",
    ]
    missing, slow = _fanout_misses(result)
    at = lines.index("FANOUT")
    lines[at : at + 1] = [*missing, *slow]
    return "\n".join(lines)


def _fanout_misses(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The fan-out lines that apply: why pages were missing, what the target would need."""
    missing = [
        "- **Missing pages come from that GET.** A fan-out issues it once per spoke, all at "
        "once: redis-py opens a new connection to the hub's Redis for each concurrent "
        "command, and those that take longer than `redis_timeout_s` (2 s) on a busy machine "
        "fail the spoke's call with BACKEND_UNAVAILABLE (the hub logs `list_spoke_failed`; "
        "the client sees reason `error`). One shared in-flight read of the revision per "
        "moment (or per fan-out) would remove these failures and that 5 %; it is the "
        "enrolment code's (`hub/membership.py`), not changed here.",
    ]
    if result["fanout"]["unreached"].get("deadline"):
        missing.append(
            "- Reason `deadline`: the spoke's answer had not come back within "
            "`fanout_timeout_s` (5 s), because the hub had not yet got to it."
        )
    slow = [
        "- Meeting p99 <= 2 s on this machine needs the hub's cost per spoke call roughly "
        "halved (fewer tasks per call, one membership read per fan-out, no per-call stream "
        "set-up beyond gRPC's own) or the fan-out spread over more than one hub process.",
    ]
    return (
        missing if result["fanout"]["incomplete_calls"] else [],
        slow if not result["targets"]["fanout_p99_ms"]["met"] else [],
    )


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _met(item: dict[str, Any]) -> str:
    return "yes" if item["met"] else "**no**"


def _miss(item: dict[str, Any], unit: str) -> str:
    over = item["value"] - item["target"]
    return f"{over:+,.1f} {unit} ({item['value'] / item['target'] - 1:+.0%})"


def _floor(item: dict[str, Any], given: str, here: str) -> str:
    measured = item.get("floor_here")
    text = given.format(item["floor"])
    return text if measured is None else f"{text} · {here.format(measured)}"


def _floor_line(result: dict[str, Any]) -> list[str]:
    floor = result.get("floor")
    if floor is None:
        return []
    s = result["sizes"]
    return [
        f"- **Floor, this run:** the same {floor['connections']:,} keys, certificates and "
        "simulators against a bare grpc.aio server (`scripts/benchlib/floor_server.py`: one "
        "TLS stream per spoke on its own connection, one Ed25519 check per heartbeat, "
        f"nothing else): {floor['cpu_pct']:.1f} % of one core over "
        f"{floor['idle']['wall_s']:.0f} s and {floor['kb_per_spoke']:.1f} KB per stream "
        f"(RSS {floor['rss_0_bytes'] / 2**20:.1f} MiB with 0 streams, "
        f"{floor['idle']['rss_bytes'] / 2**20:.1f} MiB with {floor['connections']:,}), "
        f"heartbeats every {s['heartbeat_s']:g} s; other work used "
        f"{floor['idle']['foreign_cpu_share']:.0%} of the machine meanwhile.",
    ]


def _sessions(result: dict[str, Any]) -> str:
    seen = result.get("sessions")
    if seen is None:
        return ""
    again = seen["sessions"] - seen["links"]
    return (
        f" Over the whole run the simulators opened {seen['sessions']:,} sessions for "
        f"{seen['links']:,} links ({again:,} reconnects; a link was down "
        f"{seen['lost_reports']:,} times after all were up) and sent "
        f"{seen['heartbeats']:,} heartbeats."
    )


def _complete(fan: dict[str, Any], spokes: int) -> str:
    if not fan["incomplete_calls"]:
        return f"Every call carried all {spokes:,} pages."
    reasons = ", ".join(f"{why} {n:,}" for why, n in sorted(fan["unreached"].items()))
    return (
        f"**{fan['incomplete_calls']} of {fan['calls']} calls lacked some pages**: "
        f"{fan['unreached_per_call']:.1f} spokes per call on average gave no page (the "
        f"reasons the hub signed, summed over calls: {reasons})."
    )


def section(result: dict[str, Any], notes: str = "") -> str:
    """The markdown section for one federation run (``notes``: the why, in prose)."""
    s = result["sizes"]
    t = result["targets"]
    fan = result["fanout"]["latency"]
    big = result["selector_spawn"]["big"]["latency"]
    solo = result["selector_spawn"]["solo"]["latency"]
    env = result["environment"]
    mem = result["memory"]
    cpu = result["fanout"]["cpu"]
    rows = [
        (
            "hub memory per spoke: (RSS with N sessions - RSS with 0) / N",
            f"{mem['kb_per_spoke']:.1f} KB",
            f"≤ {t['kb_per_spoke']['target']:.0f} KB",
            _floor(t["kb_per_spoke"], "{:.0f} KB", "{:.1f} KB"),
            _met(t["kb_per_spoke"]),
        ),
        (
            f"hub CPU at idle, heartbeats every {s['heartbeat_s']:g} s "
            f"({result['heartbeats_per_s']:.0f}/s)",
            f"{result['idle']['cpu_pct']:.1f} % of one core",
            f"≤ {t['cpu_pct']['target']:.0f} %",
            _floor(t["cpu_pct"], "{:.0f} %", "{:.1f} %"),
            _met(t["cpu_pct"]),
        ),
        (
            f"fan-out list over {s['spokes']:,} spokes, p99",
            f"{_ms(fan['p99_ms'])} ms",
            f"≤ {t['fanout_p99_ms']['target']:,.0f} ms",
            "none given",
            _met(t["fanout_p99_ms"]),
        ),
    ]
    misses = [
        f"{name}: {_miss(t[key], unit)} over the target"
        for key, name, unit in (
            ("kb_per_spoke", "memory", "KB"),
            ("cpu_pct", "CPU", "points"),
            ("fanout_p99_ms", "fan-out p99", "ms"),
        )
        if not t[key]["met"]
    ]
    parts = [
        BEGIN,
        f"## Federation: {s['spokes']:,} connect-mode spokes",
        "",
        f"`scripts/bench --arms federation` ({env['date']}, commit {env['git_commit']}"
        f"{' with uncommitted changes in the tree' if env.get('git_dirty') else ''}, "
        f"{result['elapsed_s']:.0f} s). Raw numbers: [`bench/federation.json`]"
        "(bench/federation.json). Issue #10.",
        "",
        f"One real hubd over TLS whose config lists {s['spokes']:,} connect-mode spokes, each "
        "with its own Ed25519 key in the trust store and its own TLS client certificate (one "
        f"CA); {s['processes']} simulator processes (`scripts/benchlib/sim_spokes.py`) run "
        f"{s['spokes'] // s['processes']:,} real `HubLink` sessions each, heartbeating a "
        f"signed status every {s['heartbeat_s']:g} s and answering ListAgents and SpawnAgent "
        "with signed replies bound to the command. All "
        f"{result['connections']['at_start']:,} sessions were distinct ESTABLISHED TCP "
        "connections at the hub's port (matched by port in `/proc/<pid>/net/tcp` of the hubd "
        f"and the simulators; {result['connections']['at_end']:,} at the end) and every spoke "
        f"was READY in `hubctl --json spokes`; the sessions opened in {result['connect_s']:.1f} s."
        + _sessions(result),
        "",
        "| measure | measured | target | floor: the issue's · this run's | met |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows),
        "",
        f"- **Memory:** hubd RSS {result['memory']['rss_0_bytes'] / 2**20:.1f} MiB with 0 "
        f"sessions, {result['memory']['rss_n_bytes'] / 2**20:.1f} MiB with "
        f"{s['spokes']:,} (peak in the window "
        f"{result['idle']['rss_peak_bytes'] / 2**20:.1f} MiB).",
        f"- **CPU:** over a {result['idle']['wall_s']:.0f} s window of heartbeats only "
        f"(utime+stime of the hubd), {result['cpu_us_per_heartbeat']:,.0f} µs of hub CPU "
        f"per heartbeat if they cost it all. With 0 sessions the same hubd used "
        f"{result['baseline']['cpu_pct']:.1f} % (see below). The simulators "
        f"used {result['idle']['simulators_cpu_pct']:.1f} % of one core meanwhile; other work "
        f"on the machine {result['idle']['foreign_cpu_share']:.0%} of all its cores.",
        *_floor_line(result),
        f"- **Fan-out list** (`Client.list()` over every spoke, {result['fanout']['calls']} "
        f"calls one after another): p50 {_ms(fan['p50_ms'])} ms, p90 {_ms(fan['p90_ms'])} ms, "
        f"p99 {_ms(fan['p99_ms'])} ms. Client-side time, so it includes the client's check of "
        f"up to {s['spokes']:,} signed pages. {_complete(result['fanout'], s['spokes'])} "
        f"CPU per call: hubd {cpu['hub_cpu_s_per_op']:.2f} s, simulators "
        f"{cpu['simulators_cpu_s_per_op']:.2f} s, client {cpu['client_cpu_s_per_op']:.2f} s; "
        f"other work used {cpu['foreign_cpu_share']:.0%} of the machine meanwhile.",
        f"- **Selector spawn** (`Client.spawn(selector={{bench: fed}})`, "
        f"{result['selector_spawn']['big']['spawns']} each, alternating): p50 "
        f"{_ms(big['p50_ms'])} ms over {s['spokes']:,} spokes (placed on "
        f"{result['selector_spawn']['big']['spokes_used']} distinct spokes) against "
        f"{_ms(solo['p50_ms'])} ms in a 1-spoke federation in the same run "
        f"({result['selector_spawn_ratio_p50']:.2f}x); p99 {_ms(big['p99_ms'])} ms and "
        f"{_ms(solo['p99_ms'])} ms.",
    ]
    if misses:
        parts += ["", "Missed: " + "; ".join(misses) + "."]
    if notes:
        parts += ["", notes]
    parts += [
        "",
        "Everything (hubd, simulators, Redis, client) shares the machine's "
        f"{env.get('cores', '?')} cores with whatever else runs on it, so CPU spent by the "
        "simulators and other work shows up in the latencies (other work's share is given "
        "per phase above, from `/proc/stat` less our processes); the hub's CPU seconds and "
        "RSS are its own.",
        END,
    ]
    return "\n".join(parts) + "\n"


def keep(old: str, new: str) -> str:
    """``new`` (a regenerated page) with the hand-kept sections of ``old`` carried over:
    this arm's (before ``## Plots``) and any other between ``<!-- NAME:begin`` and
    ``<!-- NAME:end -->`` markers (at the end, in their order), unless ``new`` has them."""
    for found in _BLOCK.finditer(old):
        name, block = found.group(1), found.group(0).rstrip("\n") + "\n"
        if f"<!-- {name}:begin" in new:
            continue
        new = put(new, block) if name == "federation" else new.rstrip("\n") + "\n\n" + block
    return new


def put(page: str, block: str) -> str:
    """``page`` with ``block`` replacing its federation section, or before ``## Plots``."""
    if BEGIN in page and END in page:
        return page[: page.index(BEGIN)] + block + page[page.index(END) + len(END) + 1 :]
    if ANCHOR in page:
        at = page.index(ANCHOR) + 1
        return page[:at] + block + "\n" + page[at:]
    return page.rstrip("\n") + "\n\n" + block


def write(result: dict[str, Any], docs: Path, notes: str = "") -> None:
    """``docs/bench/federation.json`` and the section in ``docs/benchmarks.md``."""
    bench = docs / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "federation.json").write_text(json.dumps(result, indent=1) + "\n")
    page = docs / "benchmarks.md"
    old = page.read_text() if page.exists() else "# Benchmarks\n"
    page.write_text(put(old, section(result, notes)))
