"""The index of two-step writes in flight: "record written, job pending" (keys.py
``job_pending``), so that spoked's start-up scan reads only the agents a crash can have left
without their bullmq job, never the whole backlog (issue 13).

A spawn due now writes its record and its job in one script (spoke/spawn_lua.py): no crash can
come between them. Every other write that makes a record QUEUED and then adds its job in a
second round trip is wrapped in :func:`two_step`: a spawn stored without its job (delayed, not
yet accepted, held for approvals), a replay, an approval's release, an answered NEEDS_INPUT.
The mark is written *before* the first step and removed only after the last one succeeded, so
a crash (SIGKILL, power loss) at any point between leaves it behind for the next start-up
(spoke/start_up_scan.py). Each mark is its own member (``<agent id>:<token>``, scored by the
time it was made): two writes in flight for one agent never remove each other's.

A write that Redis refused cleanly (a ``QueueError`` other than ``BackendError``: the quota,
a full backlog, an illegal transition) removes its mark: nothing of it is half done. A write
that failed otherwise (Redis unreachable or timed out, cancelled) keeps its mark, since its
first step may have run; the start-up scan checks it.

Costs: one ZADD before and one ZREM after each such write (never on the one-script spawn);
the index holds only the writes in flight and the leftovers of crashes and Redis failures.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from .backend import BackendError, QueueError
from .keys import SpokeKeys

__all__ = ["LIVE_MARK_GRACE_MS", "Mark", "clear", "mark", "read", "two_step"]

LIVE_MARK_GRACE_MS = 300_000
"""A mark younger than this may belong to a write still in flight in another spoked of the
site: the start-up scan heals its agent if it needs it, but leaves the mark for its writer
(or the next start-up) to remove. Far longer than any two-step write (a few op timeouts)."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One member of the index: an agent whose job a write may not have added yet."""

    member: str
    agent_id: str
    marked_ms: int


def _member(agent_id: str) -> str:
    return f"{agent_id}:{secrets.token_hex(6)}"  # agent ids hold no ':' (keys.py)


async def mark(redis: aioredis.Redis, keys: SpokeKeys, agent_id: str) -> str:
    """Note a two-step write of ``agent_id`` before its first step; returns the member."""
    member = _member(agent_id)
    await redis.zadd(keys.job_pending, {member: int(time.time() * 1000)})
    return member


async def clear(redis: aioredis.Redis, keys: SpokeKeys, *members: str) -> None:
    if members:
        await redis.zrem(keys.job_pending, *members)


_UNMARKED: Final = contextlib.nullcontext()
"""What ``two_step`` gives a write done in one script: nothing to mark, nothing allocated."""


def two_step(
    redis: aioredis.Redis, keys: SpokeKeys, agent_id: str, *, when: bool = True
) -> contextlib.AbstractAsyncContextManager[None]:
    """Mark ``agent_id`` around a write that stores its QUEUED record and then adds its job in
    another round trip; the mark goes once the body returned (or Redis refused it cleanly).
    With ``when`` false (the write is one script: the spawn's hot path) nothing is marked."""
    return _marked(redis, keys, agent_id) if when else _UNMARKED


@contextlib.asynccontextmanager
async def _marked(redis: aioredis.Redis, keys: SpokeKeys, agent_id: str) -> AsyncIterator[None]:
    member = await mark(redis, keys, agent_id)
    try:
        yield
    except QueueError as exc:
        if not isinstance(exc, BackendError):
            await clear(redis, keys, member)
        raise
    await clear(redis, keys, member)


async def read(
    redis: aioredis.Redis, keys: SpokeKeys, offset: int, count: int, *, until_ms: int
) -> list[Mark]:
    """Up to ``count`` marks made by ``until_ms``, from ``offset``, oldest first."""
    rows: list[tuple[bytes, float]] = await redis.zrangebyscore(  # type: ignore[assignment]  # bytes
        keys.job_pending, "-inf", until_ms, start=offset, num=count, withscores=True
    )
    out: list[Mark] = []
    for raw, score in rows:
        member = raw.decode()
        out.append(Mark(member, member.rpartition(":")[0], int(score)))
    return out
