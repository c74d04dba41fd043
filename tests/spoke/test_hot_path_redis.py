"""The spoke's hot path on one pipelined Redis connection (shared/redis_mux.py, issue 13):
concurrent signed spawns and statuses open no Redis connection per caller, and each still
costs its round trips (admission, then the one spawn script; a status's admission and read
together)."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from hubspoke.spoke.app import SpokeApp

from .conftest import SpokeClient

CALLS = 48


async def _stats(r: aioredis.Redis) -> tuple[int, int]:
    """(connections Redis accepted so far, EVALSHA calls so far)."""
    stats = await r.info("stats")
    commands = await r.info("commandstats")
    evalsha = int(commands.get("cmdstat_evalsha", {}).get("calls", 0))
    return int(stats["total_connections_received"]), evalsha


async def test_concurrent_spawns_and_statuses_share_one_connection(
    spoke_app: SpokeApp, client: SpokeClient, redis_client: aioredis.Redis
) -> None:
    queue = spoke_app._queue
    assert queue is not None
    await queue.jobs.pause()  # nothing runs: only the callers' path talks to Redis
    first = await client.spawn("duration=1")  # connects and loads the scripts
    await client.get(first.agent.agent_id)
    conns, evalshas = await _stats(redis_client)

    spawned = await asyncio.gather(*(client.spawn("duration=1") for _ in range(CALLS)))
    ids = [reply.agent.agent_id for reply in spawned]
    assert len(set(ids)) == CALLS
    read = await asyncio.gather(*(client.get(agent_id) for agent_id in ids))
    assert [reply.agent.agent_id for reply in read] == ids

    conns_after, evalshas_after = await _stats(redis_client)
    # redis-py's pool opened a connection for each caller in flight (dozens here).
    assert conns_after - conns <= 2  # 0 on the mux; slack for a background reconnect
    # Round trips as before: admission + spawn script per spawn, admission per status.
    assert evalshas_after - evalshas == 3 * CALLS
