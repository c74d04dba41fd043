"""hub/index_lookup.py against a real Redis: the one script a status by bare id reads with its
admission answers exactly what the agent index (``HubStore.find_agent``) and the outbox's
lookups (``Outbox.lookup``) answer read one by one, for spokes in every outbox shard (the
script computes the shard's CRC-32 itself); it reloads after Redis lost its scripts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.hub.index_lookup import MAX_SPOKES, Found, IndexLookup
from hubspoke.hub.mux_pipe import MuxPipe
from hubspoke.hub.outbox import KILL, SPAWN, Held, Outbox, OutboxConfig
from hubspoke.hub.outbox_keys import SHARDS, shard_of
from hubspoke.hub.prefetch import Prefetched, Prefetcher
from hubspoke.hub.store import HubStore, agent_index_key, agent_key

HUB = "hub"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[HubStore]:
    s = HubStore.from_url(redis_url, HUB, 5.0)
    try:
        yield s
    finally:
        await s.close()


def _held(spoke: str, kind: str, agent: str) -> Held:
    now = int(time.time() * 1000)
    return Held(
        spoke=spoke,
        kind=kind,
        command_id=agent if kind == SPAWN else f"k-{agent}",
        agent=agent,
        principal="alice",
        envelope=b"\x0a\x01x",
        accepted_ms=now,
        deadline_ms=now + 3_600_000,
        profile="synthetic" if kind == SPAWN else "",
        task="t" if kind == SPAWN else "",
    )


async def _read(store: HubStore, lookup: IndexLookup, agent: str) -> Found:
    """The script through the hub's pipelined connection, as the admission sends it."""
    pipe = MuxPipe()
    lookup.queue(pipe, agent)
    assert store.mux is not None
    return lookup.parse(agent, pipe.replies(await store.mux.checked(*pipe.commands)))


async def test_the_script_answers_as_the_index_and_outbox_reads_do(store: HubStore) -> None:
    outbox = Outbox(store.client, OutboxConfig(HUB), 5.0)
    lookup = IndexLookup(store.client, HUB)
    await lookup.load()
    spokes: dict[int, str] = {}
    i = 0
    while len(spokes) < SHARDS:  # a spoke in every shard, names of several lengths
        name = f"edge-{'x' * (i % 5)}{i}"
        spokes.setdefault(shard_of(name), name)
        i += 1
    for n, spoke in enumerate(sorted(spokes.values())):
        agent = f"a-{n}"
        await store.remember_agent(agent, spoke, 60)
        if n % 3 == 0:
            assert await outbox.hold(_held(spoke, SPAWN, agent))
        elif n % 3 == 1:
            held = _held(spoke, SPAWN, agent)
            assert await outbox.hold(held)
            assert await outbox.finish(held, "EXPIRED", "UNDELIVERED")
            assert await outbox.hold(_held(spoke, KILL, agent))
        found = await _read(store, lookup, agent)
        assert found.spokes == await store.find_agent(agent) == (spoke,)
        assert found.lookups == {spoke: await outbox.lookup(spoke, agent)}
        assert any(x is not None for x in found.lookups[spoke]) == (n % 3 != 2)


async def test_expired_old_layout_and_bounded_entries(store: HubStore) -> None:
    lookup = IndexLookup(store.client, HUB)
    await lookup.load()
    await store.remember_agent("gone", "spoke-b", 60)
    await store.client.hset(agent_index_key(HUB, "gone"), "spoke-a", 1)  # expired long ago
    await store.client.set(agent_key(HUB, "gone"), "spoke-c")  # a hub of the old layout's
    found = await _read(store, lookup, "gone")
    assert found.spokes == await store.find_agent("gone") == ("spoke-b", "spoke-c")
    assert sorted(found.lookups) == ["spoke-b", "spoke-c"]
    for n in range(MAX_SPOKES + 2):
        await store.remember_agent("reused", f"spoke-{n}", 60)
    found = await _read(store, lookup, "reused")
    assert len(found.spokes) == MAX_SPOKES + 2
    assert len(found.lookups) == MAX_SPOKES  # the others are looked up as before


async def test_a_lost_script_is_read_as_before_then_loaded_again(store: HubStore) -> None:
    outbox = Outbox(store.client, OutboxConfig(HUB), 5.0)
    prefetcher = Prefetcher(HUB, store, outbox, lambda: False, IndexLookup(store.client, HUB))
    await prefetcher.load()
    await store.remember_agent("a-1", "spoke-1", 60)
    cmd = command_pb2.Command(audience=HUB, get_agent=command_pb2.GetAgentBody(agent="a-1"))

    async def prefetched() -> Prefetched:
        plan = prefetcher.plan(cmd)
        pipe = MuxPipe()
        plan.queue(pipe)
        assert store.mux is not None
        return plan.parse(pipe.replies(await store.mux.execute(*pipe.commands)))

    first = await prefetched()
    assert first.found is not None
    assert first.indexed("a-1") == ("spoke-1",)
    await store.client.script_flush()
    lost = await prefetched()  # NOSCRIPT: nothing prefetched, the caller reads it itself
    assert lost.found is None
    assert lost.indexed("a-1") is None
    plain = await prefetched()  # meanwhile the reads as before; the script loads again
    assert plain.indexed("a-1") == ("spoke-1",)
    for _ in range(100):
        again = await prefetched()
        if again.found is not None:
            break
    assert again.found is not None
    assert again.outbox_lookup("spoke-1", "a-1") == (None, None, None)
