"""Walk the agent index (keys.py ``agent_index``) in steps, by create time from a cursor rather
than by rank, so that the sweeper forgetting old agents meanwhile cannot shift the walk past
records it has not read (spoke/start_up_scan.py, spoke/held_scan.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from .keys import SpokeKeys

__all__ = ["walk"]


async def walk(redis: aioredis.Redis, keys: SpokeKeys, batch: int) -> AsyncIterator[list[str]]:
    """Every agent id of the index, oldest first, ``batch`` per step (one round trip each)."""
    low: float | str = "-inf"
    at_low = 0  # members scored ``low`` already read
    while True:
        rows: list[tuple[bytes, float]] = await redis.zrangebyscore(  # type: ignore[assignment]  # bytes
            keys.agent_index, low, "+inf", start=at_low, num=batch, withscores=True
        )
        if not rows:
            return
        yield [raw.decode() for raw, _ in rows]
        last = rows[-1][1]
        at_low = (at_low if last == low else 0) + sum(1 for _, score in rows if score == last)
        low = last
