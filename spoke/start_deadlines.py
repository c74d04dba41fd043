"""The index of start deadlines (keys.py ``start_deadlines``): agent ids scored by the time they
must have started by. The create script adds an agent stored with a deadline, a replay adds it
again with its new one, and spoked's start-up scan adds those stored before the index existed;
the sweeper reads only the due part (spoke/sweeper.py), so its cost follows the agents due, not
the backlog.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from .keys import SpokeKeys

BATCH = 500
"""Due agents one sweep step takes."""

NOT_YET_QUEUED = (b"AWAITING_APPROVAL",)
"""States from which an agent may still become QUEUED: kept in the index past the deadline
(a held agent approved late is expired by the sweeper, or by the worker that takes it)."""


async def add(redis: aioredis.Redis, keys: SpokeKeys, deadlines: Iterable[tuple[str, int]]) -> None:
    """Index these (agent id, deadline ms); deadlines of 0 (none) are left out."""
    members = {agent_id: ms for agent_id, ms in deadlines if ms > 0}
    if members:
        await redis.zadd(keys.start_deadlines, members)


async def due(
    redis: aioredis.Redis, keys: SpokeKeys, now_ms: int, offset: int = 0
) -> list[tuple[str, bytes | None]]:
    """Up to ``BATCH`` agents whose deadline has passed, from ``offset`` in deadline order, with
    their state now (None: the record is gone); two round trips."""
    ids: list[bytes] = await redis.zrangebyscore(  # type: ignore[assignment]  # bytes
        keys.start_deadlines, 1, now_ms, start=offset, num=BATCH
    )
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for raw in ids:
        pipe.hget(keys.agent(raw.decode()), "state")
    states: list[bytes | None] = await pipe.execute()
    return [(raw.decode(), state) for raw, state in zip(ids, states, strict=True)]


async def forget(redis: aioredis.Redis, keys: SpokeKeys, agent_ids: list[str]) -> None:
    if agent_ids:
        await redis.zrem(keys.start_deadlines, *agent_ids)
