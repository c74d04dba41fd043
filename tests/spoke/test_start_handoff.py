"""The just-stored spawn handed to this process's worker (issue 13, spawn-to-running;
spoke/start_handoff.py): a spawn this spoked stored is started without reading its record
and signed copies back from Redis, and what is handed is what Redis holds."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.keys import SpokeKeys

from .conftest import SPOKE, SpokeClient

READS = ("hgetall", "get")
"""The worker's read of a record (HGETALL) and its signed copies (GET)."""


async def _reads(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in READS)


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
    for handed in (False, True, False, True, False, True):
        handoff.max_entries = 1024 if handed else 0
        before = await _reads(redis_client)
        await _run_one(client, redis_client)
        counts[handed].append(await _reads(redis_client) - before)
    # Without the hand-off each start reads the record and its signed copies: two more.
    assert counts[False] == [counts[False][0]] * 3
    assert counts[True] == [counts[False][0] - 2] * 3, counts
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
