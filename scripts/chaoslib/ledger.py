"""The checker: what clients were told, what agents did, and what the spoke reports at the end.

Three records are compared, each written by a different party so none can vouch for itself:

* the client's op log (:class:`ClientOp`): every call as ``ok``, ``failed`` (a definitive
  refusal) or ``unknown`` (UNAVAILABLE, a deadline: the command may or may not have landed);
* the agents' ledger (:class:`Run`, from ``tests/agents/ledger_agent.py``): one line when a
  run starts, one when it ends (``ok`` or ``term``; a SIGKILLed run has no end);
* the final states read back through the hub once the scenario is quiet (:class:`Final`).

:func:`check` turns them into a :class:`Verdict`:

acked        command ids a spawn answered OK for
executed     command ids with at least one run in the ledger
lost         acked, never run, and not in a final failed state with a reason (nor found)
duplicated   command ids run more than once, split into *allowed* (retry-safe profile,
             attempts distinct and increasing, each run over before the next began) and
             *unallowed* (anything else); ``overlapping`` lists those whose runs were alive
             at the same time, the worst kind; ``dup_after_success`` those run again after a
             run had ended ok (its supervisor died first, so the spoke never saw the exit)
recovered    interrupted runs whose agent still reached a final state: retried to
             SUCCEEDED, or reported FAILED with reason LOST
misreported  a run ended ok but the final state is not SUCCEEDED (except FAILED/LOST,
             counted as ``lost_but_completed``: the spoke could not know), or SUCCEEDED with
             no run that ended ok
orphans      processes of this scenario's agents still alive after it (pids)
max_concurrent  most runs alive at one instant (a missing end counts up to the next run of
             the same id, or the agent's end time)
outage       spawns sent and answered wholly inside a window when the spoke cannot accept
             work (from the fault until the repair begins: the replacement process is
             launched or the proxy heals); any OK from the spoke among them is a violation,
             while one the hub held in its outbox (PENDING_DELIVERY, code HELD) is counted
             in ``outage_held`` and must then run like any acked spawn
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FAILED_FINAL",
    "ClientOp",
    "Final",
    "Run",
    "Verdict",
    "Window",
    "check",
    "read_ledger",
    "runs_from_lines",
]

FAILED_FINAL = frozenset({"FAILED", "KILLED", "TIMED_OUT", "DEAD_LETTERED", "EXPIRED"})
"""Final states that say, with a reason, that the work did not (all) run; EXPIRED: it
could not start by its start deadline (NOT_STARTED, or UNDELIVERED from the hub's outbox)."""
FINAL = FAILED_FINAL | {"SUCCEEDED"}
ABSENT = "ABSENT"
"""Final state of a command id the spoke does not know (NOT_FOUND)."""
SAMPLE = 12
"""How many ids each list in a verdict keeps (the counts are always complete)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One run of an agent as its own ledger lines tell it."""

    cid: str
    attempt: int
    pid: int
    start: float
    end: float | None = None
    how: str | None = None
    """``ok``, ``term``, or None when no end line was written (SIGKILL)."""


@dataclass(frozen=True, slots=True)
class ClientOp:
    """One client call and what it was told."""

    op: str
    cid: str
    outcome: str
    """``ok``, ``failed`` or ``unknown``."""
    code: str
    t0: float
    t1: float
    profile: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Final:
    """An agent's state read back through the hub after the scenario."""

    cid: str
    state: str
    reason: str = ""
    attempt: int = 0
    end: float | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """A span during which spawns must not be answered OK (the system cannot take work)."""

    name: str
    start: float
    end: float


@dataclass
class Verdict:
    sent: int = 0
    acked: int = 0
    executed: int = 0
    executed_unacked: int = 0
    runs: int = 0
    runs_without_end: int = 0
    lost: list[str] = field(default_factory=list)
    lost_count: int = 0
    unfinished: list[str] = field(default_factory=list)
    unfinished_count: int = 0
    duplicated: int = 0
    duplicated_allowed: int = 0
    duplicated_unallowed: int = 0
    unallowed: list[str] = field(default_factory=list)
    dup_after_success: int = 0
    overlapping: list[str] = field(default_factory=list)
    overlapping_count: int = 0
    interrupted: int = 0
    recovered_retried: int = 0
    recovered_lost: int = 0
    misreported: list[str] = field(default_factory=list)
    misreported_count: int = 0
    lost_but_completed: int = 0
    orphans: list[int] = field(default_factory=list)
    max_concurrent: int = 0
    limit: int = 0
    over_limit_s: float = 0.0
    outage_ops: int = 0
    outage_ok: int = 0
    outage_held: int = 0
    outage_codes: dict[str, int] = field(default_factory=dict)
    client_outcomes: dict[str, int] = field(default_factory=dict)
    final_states: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_ledger(path: Path) -> list[Run]:
    """The runs recorded in a ledger file (a missing file is an empty ledger)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return runs_from_lines(lines)


def runs_from_lines(lines: Iterable[Mapping[str, Any]]) -> list[Run]:
    """Pair start and end lines by (pid, command id, attempt); order by start time."""
    starts: dict[tuple[int, str, int], Mapping[str, Any]] = {}
    ends: dict[tuple[int, str, int], Mapping[str, Any]] = {}
    for line in lines:
        key = (int(line["pid"]), str(line["cid"]), int(line["attempt"]))
        (starts if line["ev"] == "start" else ends)[key] = line
    runs = []
    for key, s in starts.items():
        e = ends.get(key)
        runs.append(
            Run(
                cid=key[1],
                attempt=key[2],
                pid=key[0],
                start=float(s["t"]),
                end=float(e["t"]) if e else None,
                how=str(e["how"]) if e else None,
            )
        )
    return sorted(runs, key=lambda r: r.start)


def _by_cid(runs: Sequence[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.cid, []).append(r)
    return out


def _effective_end(run: Run, later: Sequence[Run], final: Final | None, horizon: float) -> float:
    """Where a run with no end line is taken to have ended, for the concurrency count."""
    if run.end is not None:
        return run.end
    bounds = [r.start for r in later]
    if final is not None and final.end is not None and final.end >= run.start:
        bounds.append(final.end)
    return min(bounds) if bounds else horizon


def _overlaps(runs: Sequence[Run]) -> bool:
    """Were two runs of one id alive at once? A run without an end cannot be ruled out."""
    for earlier, later in itertools.pairwise(runs):
        if earlier.end is None or earlier.end > later.start:
            return True
    return False


def _duplicate_allowed(runs: Sequence[Run], retry_safe: bool) -> bool:
    attempts = [r.attempt for r in runs]
    return retry_safe and attempts == sorted(set(attempts)) and not _overlaps(runs)


def _concurrency(
    runs: Sequence[Run], finals: Mapping[str, Final], horizon: float, limit: int
) -> tuple[int, float]:
    """Most runs alive at one instant, and the seconds spent above ``limit``."""
    by_cid = _by_cid(runs)
    edges: list[tuple[float, int]] = []
    for cid, group in by_cid.items():
        for i, r in enumerate(group):
            end = _effective_end(r, group[i + 1 :], finals.get(cid), horizon)
            edges += [(r.start, 1), (max(end, r.start), -1)]
    edges.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    live = peak = 0
    over = 0.0
    last = edges[0][0] if edges else 0.0
    for t, delta in edges:
        if limit and live > limit:
            over += t - last
        live += delta
        peak = max(peak, live)
        last = t
    return peak, over


def check(
    *,
    ops: Sequence[ClientOp],
    runs: Sequence[Run],
    finals: Mapping[str, Final],
    retry_safe: Mapping[str, bool],
    windows: Sequence[Window] = (),
    limit: int = 0,
    orphans: Sequence[int] = (),
    horizon: float | None = None,
) -> Verdict:
    """Compare the three records; see the module docstring for each figure."""
    v = Verdict(limit=limit, orphans=list(orphans))
    spawns = [o for o in ops if o.op == "spawn"]
    sent = {o.cid for o in spawns}
    acked = {o.cid for o in spawns if o.outcome == "ok"}
    by_cid = _by_cid(runs)
    executed = set(by_cid)
    v.sent, v.acked, v.executed = len(sent), len(acked), len(executed & sent)
    v.executed_unacked = len((executed & sent) - acked)
    v.runs = len(runs)
    v.runs_without_end = sum(1 for r in runs if r.end is None)
    v.client_outcomes = dict(Counter(f"{o.outcome}:{o.code}" for o in spawns))
    v.final_states = dict(Counter(f.state for f in finals.values()))
    v.reasons = dict(Counter(f"{f.state}:{f.reason}" for f in finals.values() if f.reason))

    lost, unfinished, unallowed, overlapping, misreported = [], [], [], [], []
    for cid in sorted(acked):
        final = finals.get(cid)
        state = final.state if final else ABSENT
        if state not in FINAL and state != ABSENT:
            unfinished.append(cid)
        reported = state in FAILED_FINAL and bool(final and final.reason)
        if cid not in executed and not reported:
            lost.append(cid)
    for cid, group in by_cid.items():
        final = finals.get(cid)
        state = final.state if final else ABSENT
        last = group[-1]
        completed = any(r.how == "ok" for r in group)
        if completed and state == "FAILED" and final is not None and final.reason == "LOST":
            v.lost_but_completed += 1
        elif completed != (state == "SUCCEEDED"):
            misreported.append(cid)
        interrupted = any(r.how != "ok" for r in group)
        if interrupted:
            v.interrupted += 1
            if state == "SUCCEEDED" and last.how == "ok" and len(group) > 1:
                v.recovered_retried += 1
            elif state in FAILED_FINAL and final is not None and final.reason == "LOST":
                v.recovered_lost += 1
        if len(group) < 2:
            continue
        v.duplicated += 1
        if any(r.how == "ok" for r in group[:-1]):
            v.dup_after_success += 1
        if _overlaps(group):
            overlapping.append(cid)
        if _duplicate_allowed(group, retry_safe.get(cid, False)):
            v.duplicated_allowed += 1
        else:
            v.duplicated_unallowed += 1
            unallowed.append(cid)

    v.lost_count, v.lost = len(lost), lost[:SAMPLE]
    v.unfinished_count, v.unfinished = len(unfinished), unfinished[:SAMPLE]
    v.unallowed = sorted(unallowed)[:SAMPLE]
    v.overlapping_count, v.overlapping = len(overlapping), sorted(overlapping)[:SAMPLE]
    v.misreported_count, v.misreported = len(misreported), sorted(misreported)[:SAMPLE]

    end = horizon if horizon is not None else max((o.t1 for o in ops), default=0.0)
    v.max_concurrent, over = _concurrency(runs, finals, end, limit)
    v.over_limit_s = round(over, 2)

    inside = [o for o in spawns if any(w.start <= o.t0 and o.t1 <= w.end for w in windows)]
    v.outage_ops = len(inside)
    v.outage_ok = sum(1 for o in inside if o.outcome == "ok" and o.code != "HELD")
    v.outage_held = sum(1 for o in inside if o.code == "HELD")
    v.outage_codes = dict(Counter(o.code for o in inside))
    return v
