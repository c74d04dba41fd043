"""The hub's outbox in shards of spokes (hub/outbox_keys.py, hub schema 3) against a real
Redis: bounds per spoke and in all (the sum of the shards' counts), every shard's spokes
listed, and a schema 2 outbox (one hash tag per hub) moved at start-up and still delivered.
tests/hub/cluster re-runs these on a Redis Cluster, where the shards spread over the nodes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from hubspoke.hub.outbox import Held, Outbox, OutboxConfig, OutboxFullError
from hubspoke.hub.outbox_keys import shard_base, shard_of
from hubspoke.hub.store import HubStore, schema_key
from hubspoke.version import HUB_SCHEMA_VERSION


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


def spokes_in_distinct_shards(count: int) -> list[str]:
    """``count`` spoke names whose outboxes are in different shards."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        found.setdefault(shard_of(f"edge-{i}"), f"edge-{i}")
        i += 1
    return list(found.values())


def held(spoke: str, command_id: str) -> Held:
    now = int(time.time() * 1000)
    return Held(
        spoke=spoke,
        kind="spawn",
        command_id=command_id,
        agent=command_id,
        principal="alice",
        envelope=b"\x0a\x01x",
        accepted_ms=now,
        deadline_ms=now + 3_600_000,
        profile="synthetic",
        task="t",
    )


async def test_bounds_per_spoke_and_in_all_over_the_shards(client: redis.asyncio.Redis) -> None:
    outbox = Outbox(client, OutboxConfig("hub", max_per_spoke=2, max_total=3), 5.0)
    a, b, c = spokes_in_distinct_shards(3)
    assert await outbox.hold(held(a, "a1"))
    assert not await outbox.hold(held(a, "a1"))  # a retry adds nothing
    assert await outbox.hold(held(a, "a2"))
    with pytest.raises(OutboxFullError, match="outbox_max_per_spoke"):
        await outbox.hold(held(a, "a3"))
    assert await outbox.hold(held(b, "b1"))
    # Three held over two shards: the third shard's first entry passes the hub's bound.
    with pytest.raises(OutboxFullError, match="outbox_max_total"):
        await outbox.hold(held(c, "c1"))
    assert await outbox.total() == 3
    assert await outbox.spokes() == sorted([a, b])
    first = await outbox.spawn(a, "a1")
    assert first is not None
    assert await outbox.finish(first, "EXPIRED", "UNDELIVERED")
    assert await outbox.total() == 2
    assert await outbox.hold(held(c, "c1"))
    assert await outbox.spokes() == sorted([a, b, c])
    assert (await outbox.depths([a, b, c]))[a][0] == 1


async def test_a_schema_2_outbox_is_moved_into_shards_at_start_up(
    client: redis.asyncio.Redis, redis_url: str
) -> None:
    old = "federation:hub:{hub}:"
    entry = held("edge-7", "c-1")
    # What a schema 2 hubd left: one held spawn, how another spawn ended, a lease.
    await client.hset(f"{old}outbox:edge-7:spawn:c-1", mapping=entry.fields())
    await client.zadd(f"{old}outbox-due:edge-7", {"spawn:c-1": entry.accepted_ms})
    await client.zadd(f"{old}outbox-age:edge-7", {"spawn:c-1": entry.accepted_ms})
    await client.zadd(f"{old}outbox-deadline:edge-7", {"spawn:c-1": entry.deadline_ms})
    await client.sadd(f"{old}outbox-spokes", "edge-7")
    await client.set(f"{old}outbox-total", 1)
    await client.set(f"{old}outbox-lease:edge-7:spawn:c-1", "hubd-a", px=30_000)
    ended = {
        "spoke": "edge-7",
        "agent": "c-0",
        "principal": "alice",
        "state": "EXPIRED",
        "reason": "UNDELIVERED",
        "accepted_ms": "1",
        "deadline_ms": "2",
        "ended_ms": "3",
    }
    await client.hset(f"{old}outbox-done:edge-7:c-0", mapping=ended)
    await client.pexpire(f"{old}outbox-done:edge-7:c-0", 600_000)
    await client.set(schema_key("hub"), 2)
    store = HubStore.from_url(redis_url, "hub", 5.0)
    try:
        state = await store.ensure_schema()
    finally:
        await store.close()
    assert (state.found, state.current, state.migrated) == (2, HUB_SCHEMA_VERSION, (2,))
    assert [k async for k in client.scan_iter(match=f"{old}outbox*")] == []
    outbox = Outbox(client, OutboxConfig("hub"), 5.0)
    assert await outbox.spokes() == ["edge-7"]
    assert await outbox.total() == 1
    assert await outbox.spawn("edge-7", "c-1") == entry
    assert [h.key for h in await outbox.due("edge-7")] == ["spawn:c-1"]
    assert await outbox.lease(entry, "hubd-b")  # the old lease is gone: deliverable now
    gone = await outbox.ended("edge-7", "c-0")
    assert gone is not None
    assert gone.state == "EXPIRED"
    done_key = f"{shard_base('hub', shard_of('edge-7'))}:outbox-done:edge-7:c-0"
    assert 0 < await client.pttl(done_key) <= 600_000
