"""What ``hubctl`` prints: JSON documents (exact) and human-readable text (escaped).

``--json`` prints the raw wire message as proto-JSON with snake_case names, exactly what
the spoke or hub signed. Human-readable output escapes every control character that text
from an agent, a spoke or a hub could carry (``\\x1b``, ``\\r``, bidi overrides such as
``\\u202e``), so output cannot move the cursor or rewrite what was printed before it:
multi-line text keeps its newlines and tabs, single-line fields escape those too.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format

from hubspoke.client import Agent, AgentEvent, EventKind, QueueStats, Spoke

__all__ = [
    "Out",
    "agent_json",
    "agent_lines",
    "capacity_text",
    "escape",
    "escape_lines",
    "event_json",
    "event_text",
    "mode_text",
    "seen_ago",
    "spoke_health_text",
    "spoke_json",
    "stats_json",
    "table",
    "write_chunk",
]

_KEEP_IN_LINES: Final = frozenset("\n\t")
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Format characters that reorder what follows them on screen."""


def _unsafe(ch: str) -> bool:
    """Control characters (C0, DEL, C1) and bidirectional overrides."""
    return unicodedata.category(ch) == "Cc" or ch in _BIDI


_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(ch: str) -> str:
    code = ord(ch)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """One line of text with every control or format character shown as an escape."""
    if text.isprintable():
        return text
    return "".join(_escaped(c) if _unsafe(c) else c for c in text)


def escape_lines(text: str) -> str:
    """Multi-line text (output tails and chunks): as :func:`escape`, newlines and tabs kept."""
    if text.isprintable():
        return text
    return "".join(_escaped(c) if _unsafe(c) and c not in _KEEP_IN_LINES else c for c in text)


# -- JSON -----------------------------------------------------------------------------------


def agent_json(agent: Agent) -> dict[str, Any]:
    """Proto-JSON (snake_case) with the state's short name and the fields always present."""
    raw = agent.raw
    doc: dict[str, Any] = json_format.MessageToDict(raw, preserving_proto_field_name=True)
    doc["agent_id"] = raw.agent_id
    doc["spoke"] = raw.spoke
    doc["state"] = agent.state.name
    doc["exit_code"] = raw.exit_code if raw.HasField("exit_code") else None
    doc["stdout_tail"] = raw.stdout_tail
    doc["stderr_tail"] = raw.stderr_tail
    if agent.mode:
        doc["mode"] = agent.mode.label
    return doc


def spoke_json(spoke: Spoke) -> dict[str, Any]:
    raw = spoke.raw
    doc: dict[str, Any] = json_format.MessageToDict(raw, preserving_proto_field_name=True)
    doc["name"] = raw.name
    doc["address"] = raw.address
    doc["health"] = spoke.health.name
    doc["labels"] = dict(raw.labels)
    doc["draining"] = raw.draining
    doc["outbox_depth"] = raw.outbox_depth
    if raw.circuit:
        doc["circuit"] = spoke.circuit.name
    if spoke.capacity is not None and spoke.capacity.mode:
        doc["mode"] = spoke.capacity.mode.label
    return doc


def mode_text(spoke: Spoke) -> str:
    """The spoke's run mode, with its profiles that run more cautiously, e.g. ``live (deploy:
    shadow)``; ``-`` when the spoke reported none."""
    cap = spoke.capacity
    if cap is None or not cap.mode:
        return "-"
    other = [f"{p.profile}: {p.mode.label}" for p in cap.profiles if p.mode and p.mode != cap.mode]
    return cap.mode.label + (f" ({', '.join(other)})" if other else "")


def profiles_text(spoke: Spoke) -> str:
    """The profiles the spoke reported in its last signed status (``-``: none yet)."""
    cap = spoke.capacity
    return ",".join(p.profile for p in cap.profiles) if cap is not None and cap.profiles else "-"


def version_text(spoke: Spoke) -> str:
    """The spoke's software and protocol version, e.g. ``0.1.0 (protocol 1)``."""
    cap = spoke.capacity
    software = cap.version if cap is not None and cap.version else ""
    protocol = f"protocol {spoke.protocol_version}" if spoke.protocol_version else ""
    if software and protocol:
        return f"{software} ({protocol})"
    return software or protocol or "-"


def outbox_text(spoke: Spoke) -> str:
    """``-``, or how many commands the hub holds for the spoke and the oldest's age."""
    if not spoke.outbox_depth:
        return "-"
    oldest = seen_ago(spoke.oldest_outbox_time) if spoke.oldest_outbox_time else ""
    return f"{spoke.outbox_depth} (oldest {oldest})" if oldest else str(spoke.outbox_depth)


def spoke_health_text(spoke: Spoke) -> str:
    """``READY``, or e.g. ``DEGRADED (redis down)``."""
    name = spoke.health.name
    return f"{name} ({spoke.health_detail})" if spoke.health_detail else name


def seen_ago(at: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago, e.g. ``3s ago``; ``never`` for None."""
    if at is None:
        return "never"
    seconds = max(((now or dt.datetime.now(dt.UTC)) - at).total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def capacity_text(spoke: Spoke) -> str:
    """Running, queued and free slots, e.g. ``2 running, 5 queued, free synthetic=2/4``."""
    cap = spoke.capacity
    if cap is None:
        return "-"
    parts = [f"{cap.running} running", f"{cap.queued + cap.delayed} queued"]
    slots = [
        f"{p.profile}={p.free_slots}/{p.max_concurrency}" for p in cap.profiles if p.max_concurrency
    ]
    if slots:
        parts.append("free " + " ".join(slots))
    return ", ".join(parts)


def event_json(event: AgentEvent) -> dict[str, Any]:
    raw = event.raw
    doc: dict[str, Any] = json_format.MessageToDict(raw, preserving_proto_field_name=True)
    doc["sequence"] = raw.sequence
    doc["kind"] = event.kind.name
    if event.kind == EventKind.STATE:
        doc["state"] = event.state.name
    return doc


def stats_json(stats: QueueStats) -> dict[str, Any]:
    doc: dict[str, Any] = json_format.MessageToDict(
        stats.raw, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return doc


# -- text -----------------------------------------------------------------------------------


@dataclass
class Out:
    """Where results go: stdout, as one JSON document or as lines."""

    json: bool
    quiet: bool

    def doc(self, value: object) -> None:
        print(json.dumps(value, indent=2, sort_keys=True), flush=True)

    def line(self, text: str) -> None:
        print(text, flush=True)


def agent_lines(agent: Agent) -> list[str]:
    """``hubctl status``: one field a line, then the output tails."""
    reason = f" ({escape(agent.reason)})" if agent.reason else ""
    lines = [
        f"agent     {escape(agent.agent_id)}",
        f"spoke     {escape(agent.spoke)}",
        f"state     {agent.state.name}{reason}",
        f"profile   {escape(agent.profile)}",
    ]
    if agent.mode and agent.mode.label != "live":
        lines.append(f"mode      {agent.mode.label}")
    if agent.shadow_run is not None:  # SHADOWED: what would have run (names of env only)
        run = agent.shadow_run
        lines.append(f"would run {escape(shlex.join(run.argv))}")
        cwd = escape(run.cwd) if run.cwd else "(the spoke's own)"
        lines.append(f"  cwd     {cwd}")
        lines.append(f"  env     {escape(' '.join(run.env_names))}")
    if agent.exit_code is not None:
        lines.append(f"exit code {agent.exit_code}")
    if agent.progress_percent >= 0 and agent.progress_message:
        lines.append(f"progress  {agent.progress_percent}% {escape(agent.progress_message)}")
    if agent.receipt is not None:
        receipt = agent.receipt
        if receipt.error:
            lines.append(f"receipt   unreadable: {escape(receipt.error)}")
        else:
            lines.append(f"receipt   {escape(receipt.status)}: {escape(receipt.summary)}")
        for blocker in receipt.blockers:
            lines.append(f"blocker   {escape(blocker)}")
        for item in receipt.verifications:
            by = f" (verified by {escape(item.verified_by)})" if item.verified_by else ""
            lines.append(f"verify    {escape(item.name)}: {escape(item.status)}{by}")
    if agent.verify_deadline is not None:
        lines.append(f"verify by {agent.verify_deadline.isoformat(timespec='seconds')}")
    if agent.inputs:  # hubctl send: messages kept for it (watch shows each)
        lines.append(f"inputs    {agent.inputs}")
    if agent.start_deadline is not None:
        lines.append(f"start by  {agent.start_deadline.isoformat(timespec='seconds')}")
    if agent.approvals_required:  # approvals: who signed, of whom, until when
        got = ", ".join(escape(a) for a in agent.approved_by) or "none yet"
        lines.append(f"approvals {len(agent.approved_by)}/{agent.approvals_required}: {got}")
        lines.append(f"approvers {escape(', '.join(agent.approvers))}")
    if agent.approval_deadline is not None:
        lines.append(f"approve by {agent.approval_deadline.isoformat(timespec='seconds')}")
    if agent.dedupe_key:  # a later spawn with it returns this agent until it is final
        lines.append(f"dedupe    {escape(agent.dedupe_key)}")
    for label, tail in (("stdout", agent.stdout_tail), ("stderr", agent.stderr_tail)):
        if tail:
            lines.append(f"--- {label} (tail) ---")
            lines.append(escape_lines(tail.rstrip("\n")))
    return lines


def event_text(event: AgentEvent) -> str | None:
    """``hubctl watch``: a state, progress or dropped-output event as one line."""
    seq = event.sequence
    if event.kind == EventKind.STATE:
        reason = f" ({escape(event.reason)})" if event.reason else ""
        return f"[{seq}] state {event.state.name}{reason}"
    if event.kind == EventKind.PROGRESS:
        return f"[{seq}] progress {event.progress_percent}% {escape(event.data)}".rstrip()
    if event.kind == EventKind.DROPPED:
        return f"[{seq}] ({escape(event.data)} bytes of output not recorded)"
    if event.kind == EventKind.INPUT:
        who = escape(event.sender)
        return f"[{seq}] input #{event.input_sequence} from {who}: {escape(event.data)}".rstrip()
    if event.kind == EventKind.APPROVAL:
        return f"[{seq}] approval by {escape(event.approver)}: {escape(event.data)}".rstrip()
    return None


def write_chunk(text: str, stderr: bool) -> None:
    """An agent's output chunk, escaped, to our stdout or stderr."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(escape_lines(text))
    stream.flush()


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned columns; every cell escaped."""
    cells = [[escape(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
