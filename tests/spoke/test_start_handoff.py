"""The just-stored spawn handed to this process's worker (issue 13, spawn-to-running;
spoke/start_handoff.py): a spawn this spoked stored is started without reading its record
and signed copies back from Redis, and what is handed is what Redis holds."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from hubspoke.gen.federation.v1 import agent_pb2
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfigError
from hubspoke.spoke.keys import SpokeKeys

from .conftest import SPOKE, Peers, SpokeClient, command_calls, spoke_config

READS = ("hgetall", "get")
"""The worker's read of a record (HGETALL) and its signed copies (GET)."""


async def _reads(r: aioredis.Redis) -> int:
    return await command_calls(r, *READS)


async def _run_one(client: SpokeClient, r: aioredis.Redis) -> None:
    """Spawn an agent and wait, by HGET (not a read counted here), until it succeeded."""
    reply = await client.spawn("duration=0")
    key = SpokeKeys(SPOKE).agent(reply.agent.agent_id)
    async with asyncio.timeout(15):
        while await r.hget(key, "state") != b"SUCCEEDED":  # noqa: ASYNC110 - in Redis
            await asyncio.sleep(0.02)


async def test_a_spawn_stored_here_starts_without_reading_it_back(
    spoke_app: SpokeApp, client: SpokeClient, redis_client: aioredis.Redis
) -> None:
    handoff = spoke_app._queue.jobs.handoff  # type: ignore[union-attr]
    counts: dict[bool, list[int]] = {True: [], False: []}
    await _run_one(client, redis_client)  # warm: connections and scripts
    for handed in (False, True) * 5:
        handoff.configure(2_000, 1_024 if handed else 0)
        before = await _reads(redis_client)
        await _run_one(client, redis_client)
        counts[handed].append(await _reads(redis_client) - before)
    # Without the hand-off each start reads the record and its signed copies: two more.
    # (Medians: a periodic task's read may fall into any one run.)
    assert statistics.median(counts[True]) == statistics.median(counts[False]) - 2, counts
    assert handoff.hits >= 3
    assert len(handoff) == 0  # each taken once


async def test_what_is_handed_is_what_redis_holds(
    start_spoke: object, redis_client: aioredis.Redis
) -> None:
    app, client = await start_spoke()  # type: ignore[operator]
    await app._worker.shutdown(drain_s=2)  # nobody takes the job: the entry stays
    queue = app._queue
    reply = await client.spawn("duration=0", labels={"team": "a"})
    agent_id = reply.agent.agent_id
    handed = queue.jobs.handoff.take(agent_id)
    assert handed is not None
    stored = await queue.worker_records.get(agent_id)
    assert handed.record == stored
    assert handed.copies == await queue.worker_records.signed_copies(agent_id)
    assert queue.jobs.handoff.take(agent_id) is None  # once only


async def test_start_handoff_ms_0_reads_every_start_from_redis(
    start_spoke: object, redis_client: aioredis.Redis
) -> None:
    app, client = await start_spoke(start_handoff_ms=0)  # type: ignore[operator]
    before = await _reads(redis_client)
    await _run_one(client, redis_client)
    assert await _reads(redis_client) - before >= 2  # the record and its signed copies
    assert app._queue.jobs.handoff.hits == 0


@pytest.mark.parametrize("key", ["start_handoff_ms", "start_handoff_max"])
def test_a_negative_hand_off_limit_is_refused(peers: Peers, key: str) -> None:
    with pytest.raises(SpokeConfigError, match=key):
        spoke_config(peers, "redis://127.0.0.1:1/0", **{key: -1})


async def test_a_spawn_killed_while_handed_over_never_runs(
    start_spoke: object, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """The hand-off skips the worker's read, not its checks: a spawn killed while its entry
    waits (the one slot busy) is never started from the entry, because the start's
    transition is conditional on the state in Redis."""
    app, client = await start_spoke(concurrency=1, start_handoff_ms=60_000)  # type: ignore[operator]
    handoff = app._queue.jobs.handoff
    busy = (await client.spawn("sleep 60", profile="shell")).agent.agent_id
    await client.wait_state(busy, "RUNNING")
    marker = tmp_path / "ran"
    killed = (await client.spawn(f"touch {marker}", profile="shell")).agent.agent_id
    assert len(handoff) == 1  # its entry waits for the busy slot
    assert (await client.kill(killed)).agent.state == agent_pb2.Agent.STATE_KILLED
    await client.kill(busy)
    await client.wait_state(busy, "KILLED")
    # The next spawn runs only after the worker went past the killed one (FIFO, one slot).
    after = (await client.spawn("duration=0")).agent.agent_id
    await client.wait_state(after, "SUCCEEDED")
    gone = await client.wait_state(killed, "KILLED")
    assert gone.attempt == 0
    assert not marker.exists()
