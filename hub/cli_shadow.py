"""``hubctl shadow-summary``: what happened to the agents of a window, to decide whether a
spoke may move on (synthetic → shadow → live, docs/operations.md).

It lists every agent the caller may see (the hub's fan-out to every spoke, or ``--spoke``;
each spoke's further pages asked of it alone) and keeps those created or ended within the
window (now minus ``--window`` to now), leaving out the rehearsal agents of ``hubctl
synthetic-all`` (label ``synthetic-all``: their failures are expected ones). It prints the
window, the count per state, the mean duration (acceptance to end, of the agents that ended
in the window) and the mean run time (start to end, of those that ran), then each failure.
A failure is an agent that ended in the window in one of :data:`FAILURE_STATES`. Exit 1 when
there was a failure, or when a spoke did not answer (the summary would not be whole); else 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

from hubspoke.client import Agent, AgentList, Client

from .cli_output import Out, escape, table
from .cli_synthetic import FIXTURE_LABEL

__all__ = ["FAILURE_STATES", "LIST_PAGE_SIZE", "in_window", "run"]

FAILURE_STATES: Final = frozenset({"FAILED", "TIMED_OUT", "DEAD_LETTERED", "EXPIRED"})
"""States that count as a failure. KILLED (someone chose to stop it), REJECTED (an approver
chose) and SHADOWED (shadow mode's normal end) do not."""
LIST_PAGE_SIZE: Final = 500
"""Agents asked for per page (the spoke's largest page)."""
_SHOWN_FAILURES: Final = 20
_EXIT_CLEAN: Final = 0
_EXIT_FAILURES: Final = 1


def in_window(agent: Agent, start: dt.datetime, end: dt.datetime) -> bool:
    """Created or ended within [start, end]."""
    return any(t is not None and start <= t <= end for t in (agent.create_time, agent.end_time))


async def run(client: Client, args: argparse.Namespace, out: Out) -> int:
    end = dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(seconds=args.window)
    agents, unreachable = await _all_agents(client, args.spoke)
    windowed = [a for a in agents if in_window(a, start, end)]
    chosen = [a for a in windowed if FIXTURE_LABEL not in a.labels]
    by_state = Counter(a.state.name for a in chosen)
    ended = [a for a in chosen if a.end_time is not None and start <= a.end_time <= end]
    failures = [a for a in ended if a.state.name in FAILURE_STATES]
    durations = [
        (a.end_time - a.create_time).total_seconds() for a in ended if a.create_time and a.end_time
    ]
    runs = [
        (a.end_time - a.start_time).total_seconds() for a in ended if a.start_time and a.end_time
    ]
    doc: dict[str, Any] = {
        "window": {"start": _iso(start), "end": _iso(end), "seconds": args.window},
        "spoke": args.spoke or "",
        "agents": len(chosen),
        "fixture_agents_left_out": len(windowed) - len(chosen),
        "by_state": dict(sorted(by_state.items())),
        "ended": len(ended),
        "mean_duration_s": _mean(durations),
        "mean_run_s": _mean(runs),
        "failures": [_failure(a) for a in failures],
        "unreachable_spokes": list(unreachable),
        "clean": not failures and not unreachable,
    }
    if out.json:
        out.doc(doc)
    else:
        _print(out, doc, failures, unreachable)
    return _EXIT_CLEAN if doc["clean"] else _EXIT_FAILURES


async def _all_agents(client: Client, spoke: str | None) -> tuple[list[Agent], list[str]]:
    """Every agent of every spoke (or of ``spoke``), following each spoke's pages."""
    first: AgentList = await client.list(spoke, LIST_PAGE_SIZE)
    agents = list(first.agents)
    for name, token in first.next_page_tokens.items():
        while token:
            page = await client.list(name, LIST_PAGE_SIZE, page_token=token)
            agents.extend(page.agents)
            token = page.next_page_tokens.get(name, "")
    return agents, list(first.unreachable_spokes)


def _print(
    out: Out, doc: dict[str, Any], failures: Sequence[Agent], unreachable: Sequence[str]
) -> None:
    w = doc["window"]
    out.line(f"window    {w['start']} .. {w['end']} ({_span(w['seconds'])})")
    left_out = doc["fixture_agents_left_out"]
    fixtures = f"; {left_out} synthetic-all agents left out" if left_out else ""
    out.line(f"agents    {doc['agents']} ({doc['ended']} ended in the window{fixtures})")
    rows = [[state, str(count)] for state, count in doc["by_state"].items()]
    for line in table(rows or [["(none)", "0"]]):
        out.line("  " + line)
    out.line(f"mean duration {_secs(doc['mean_duration_s'])} (acceptance to end)")
    out.line(f"mean run      {_secs(doc['mean_run_s'])} (start to end, agents that ran)")
    if unreachable:
        out.line(f"unreachable: {escape(', '.join(unreachable))} (the summary is not whole)")
    if failures:
        out.line(f"failures  {len(failures)}:")
        for a in failures[:_SHOWN_FAILURES]:
            reason = f" ({escape(a.reason)})" if a.reason else ""
            who = f"{escape(a.agent_id)} {escape(a.spoke)} {escape(a.profile)}"
            out.line(f"  {who} {a.state.name}{reason}")
        if len(failures) > _SHOWN_FAILURES:
            out.line(f"  ... and {len(failures) - _SHOWN_FAILURES} more (--json lists all)")
    else:
        out.line("failures  none")


def _failure(agent: Agent) -> dict[str, str]:
    return {
        "agent_id": agent.agent_id,
        "spoke": agent.spoke,
        "profile": agent.profile,
        "state": agent.state.name,
        "reason": agent.reason,
        "end_time": _iso(agent.end_time) if agent.end_time else "",
    }


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _iso(at: dt.datetime) -> str:
    return at.isoformat(timespec="seconds")
