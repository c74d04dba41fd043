"""spoked's start-up scan: put back on the queue every QUEUED record a crash left without its
bullmq job, after the spoke serves (spoke/app.py), without reading the whole backlog.

Only a write that stores a QUEUED record and adds its job in two round trips can leave such a
record; each marks itself in the index of spoke/job_pending.py first. So a start-up reads that
index alone (:func:`pending_scan`): its cost follows the writes in flight at the crash, not
the backlog (at 1 M queued the scan of every record took 89 s and statuses paid 1.41x meanwhile;
issue 13).

The scan of every record (:func:`full_scan`, ``AgentQueue.requeue_orphans``) runs once per site,
when spoke/schema.py's step 1 -> 2 left ``full_scan_owed`` (data written by a release without
the index): it also counts every waiting agent in its principal's quota and indexes start
deadlines, both for agents stored by releases before those existed. The flag goes once it
finished; an interrupted one runs again at the next start.

Both are paced so that the calls served meanwhile do not pay for them: ``start_up_scan_batch``
records (or marks) per step, ``start_up_scan_pause_ms`` of sleep between steps
(docs/operations.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import approvals, job_pending
from .backend import backend, now_ms
from .full_scan_lua import ScanStep
from .index_walk import walk
from .keys import SpokeKeys
from .model import AgentState

if TYPE_CHECKING:
    from .config import SpokeConfig
    from .queue import AgentQueue

__all__ = ["Pacing", "ScanResult", "full_scan", "heal", "pending_scan", "run"]


@dataclass(frozen=True, slots=True)
class Pacing:
    """How the scan shares spoked and Redis with the calls it serves meanwhile."""

    batch: int = 100
    """Records (or marks) read per step: two round trips (the full scan's second is one
    script, spoke/full_scan_lua.py), plus one per orphan found. Redis runs a step's script
    at once, so a call served meanwhile may wait for one step: keep it small."""
    pause_s: float = 0.025
    """Sleep between steps."""

    @classmethod
    def of(cls, cfg: SpokeConfig) -> Pacing:
        return cls(cfg.start_up_scan_batch, cfg.start_up_scan_pause_ms / 1000)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one start-up scan did."""

    requeued: int
    """Orphaned records whose job was added again (or, still needing approvals, held)."""
    full: bool
    """Whether the one-time scan of every record ran."""
    records: int
    """Records the full scan read (0 without it)."""
    marks: int
    """Marks of two-step writes read."""
    seconds: float


async def run(agents: AgentQueue, pacing: Pacing) -> ScanResult:
    """The start-up scan: the index of two-step writes, and the scan of every record if the
    schema upgrade left it owed."""
    t0 = time.monotonic()
    owed = bool(await agents.redis.exists(agents.keys.full_scan_owed))
    requeued, records = 0, 0
    if owed:
        requeued, records = await full_scan(agents, pacing)
    healed, marks = await pending_scan(agents, pacing)
    if owed:
        await agents.redis.delete(agents.keys.full_scan_owed)
    return ScanResult(requeued + healed, owed, records, marks, time.monotonic() - t0)


@backend
async def heal(agents: AgentQueue, queued: Iterable[tuple[str, str]]) -> int:
    """Of these (agent id, job id) of QUEUED records, add the job of each that has none (or
    hold it, if it still waits for approvals: stored, crashed before it was held); how many."""
    rows = list(dict(queued).items())  # one per agent
    if not rows:
        return 0
    present = await agents.jobs.exist(job for _, job in rows)
    missing = [agent_id for (agent_id, _), there in zip(rows, present, strict=True) if not there]
    return await _requeue(agents, missing)


async def _requeue(agents: AgentQueue, orphans: Iterable[str]) -> int:
    """Queue (or hold) each of these agents found QUEUED without a job, if it still is."""
    healed = 0
    for agent_id in orphans:
        orphan = await agents.records.get_or_none(agent_id)
        if orphan is None or orphan.state is not AgentState.QUEUED:
            continue  # moved on (or swept) since it was read
        if approvals.held(orphan):
            await agents.approvals.hold(orphan)
            continue
        await agents.jobs.enqueue(orphan)
        healed += 1
    return healed


def _queued(rows: Iterable[tuple[str, list[bytes | None]]]) -> list[tuple[str, str]]:
    """(agent id, job id) of the rows ``(agent id, [state, job_id, ...])`` that are QUEUED."""
    return [
        (agent_id, (row[1] or b"").decode() or SpokeKeys.job_id(agent_id))
        for agent_id, row in rows
        if row[0] == b"QUEUED"
    ]


@backend
async def pending_scan(agents: AgentQueue, pacing: Pacing) -> tuple[int, int]:
    """Heal the agents of the two-step writes marked before this scan began; remove the marks
    old enough to be no live write's (``job_pending.LIVE_MARK_GRACE_MS``). Returns (requeued,
    marks read)."""
    redis, keys = agents.redis, agents.keys
    began = now_ms()
    requeued, read, offset = 0, 0, 0
    while marks := await job_pending.read(redis, keys, offset, pacing.batch, until_ms=began):
        read += len(marks)
        pipe = redis.pipeline(transaction=False)
        for m in marks:
            pipe.hmget(keys.agent(m.agent_id), "state", "job_id")
        rows = await pipe.execute()
        requeued += await heal(
            agents, _queued((m.agent_id, row) for m, row in zip(marks, rows, strict=True))
        )
        stale = [m.member for m in marks if began - m.marked_ms >= job_pending.LIVE_MARK_GRACE_MS]
        await job_pending.clear(redis, keys, *stale)
        offset += len(marks) - len(stale)
        await asyncio.sleep(pacing.pause_s)
    return requeued, read


@backend
async def full_scan(agents: AgentQueue, pacing: Pacing) -> tuple[int, int]:
    """Every record, once per site (module docstring): count waiting agents in their quota,
    index start deadlines, heal QUEUED records without a job; one script per step
    (spoke/full_scan_lua.py). Returns (requeued, records)."""
    step = ScanStep(agents.redis, agents.keys)
    requeued, records = 0, 0
    async for ids in walk(agents.redis, agents.keys, pacing.batch):
        records += len(ids)
        requeued += await _requeue(agents, await step(ids))
        await asyncio.sleep(pacing.pause_s)
    return requeued, records
