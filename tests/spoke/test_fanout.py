"""The watch reader (spoke/fanout.py): one reader fans stream entries out to subscribers;
a slow one is marked overflowed and catches up from Redis, never blocking the others."""

from __future__ import annotations

import asyncio

from hubspoke.spoke.fanout import SUBSCRIBER_BUFFER
from hubspoke.spoke.model import AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue


def _spawn(agent_id: str) -> SpawnRequest:
    return SpawnRequest(
        agent_id=agent_id,
        issuer="operator",
        profile="synthetic",
        task="x",
        priority=5,
        timeout_ms=1000,
        max_attempts=1,
        labels={},
        digest="d",
        expire_ms=0,
        envelope=b"e",
    )


async def test_a_slow_subscriber_never_holds_up_a_fast_one(redis_url: str) -> None:
    q = AgentQueue(redis_url, "spoke-fan")
    try:
        key = q.keys.events("fan-1")
        n = SUBSCRIBER_BUFFER * 2
        async with q.fanout.subscribe(key, 0) as slow, q.fanout.subscribe(key, 0) as fast:

            async def produce() -> None:
                for i in range(1, n + 1):
                    await q.redis.xadd(key, {"kind": "stdout", "data": str(i)}, id=f"{i}-0")

            producer = asyncio.create_task(produce())
            seen: list[int] = []
            async with asyncio.timeout(30):
                while len(seen) < n:
                    seen += [int(entry_id.split(b"-")[0]) for entry_id, _ in await fast.next(1)]
            await producer
            assert seen == list(range(1, n + 1))
            assert slow.take_overflow()  # told, and its buffer dropped
            assert await slow.next(0) == []
        assert q.fanout.streams == 0  # unsubscribed: the reader stops reading it
    finally:
        await q.close()


async def test_a_follower_that_fell_behind_catches_up_without_a_gap(redis_url: str) -> None:
    q = AgentQueue(redis_url, "spoke-fan")
    try:
        await q.create(_spawn("fan-2"), 100)
        follow = q.records.follow("fan-2", 0, heartbeat_s=60)
        first = await anext(follow)  # subscribed now; then it reads nothing for a while
        assert (first.seq, first.state) == (1, "QUEUED")
        n = SUBSCRIBER_BUFFER * 2 + 100
        for i in range(n):
            await q.records.record_event("fan-2", "stdout", str(i))
        await q.records.transition("fan-2", [AgentState.QUEUED], AgentState.KILLED, "TEST")
        async with asyncio.timeout(30):
            rest = [event async for event in follow]
        assert [e.seq for e in rest] == list(range(2, n + 3))
        assert rest[-1].state == "KILLED"
    finally:
        await q.close()
