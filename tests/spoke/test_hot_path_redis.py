"""The spoke's hot path on one pipelined Redis connection (shared/redis_mux.py, issue 13):
concurrent signed spawns and statuses open no Redis connection per caller, and each is one
round trip (a spawn's admission, record and job in one script: spoke/spawn_one_trip.py; a
status's admission and record read pipelined together)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
import redis.asyncio as aioredis

from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.grpc import status
from hubspoke.spoke.app import SpokeApp

from .conftest import SPOKE, SpokeClient, command_calls

CALLS = 48


async def _stats(r: aioredis.Redis) -> tuple[int, int]:
    """(connections Redis accepted so far, EVALSHA calls so far)."""
    stats = await r.info("stats")
    return int(stats["total_connections_received"]), await command_calls(r, "evalsha")


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
    # redis-py's pool opened a connection for each caller in flight (29-45 here). On the mux
    # none; the slack is for the spoke's background work (its sweeper, metrics and worker
    # pools open connections of their own when they overlap, as on a busy machine: 3 seen).
    assert conns_after - conns <= 8
    # One script per spawn (admission, record, job: 2 before, 144 here), one per status. The
    # count is the whole server's: the spoke's background work ran 4 of its own in a loaded run.
    assert 2 * CALLS <= evalshas_after - evalshas <= 2 * CALLS + 12


async def _refusal(client: SpokeClient, env: command_pb2.SignedEnvelope) -> tuple[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn_env(env)
    failure = status.from_rpc_error(err.value)
    return failure.code.name, failure.reason


async def test_the_one_trip_spawn_admits_exactly_as_before(
    start_spoke: Callable[..., Awaitable[tuple[SpokeApp, SpokeClient]]],
    redis_client: aioredis.Redis,
) -> None:
    """The admission inside the spawn script: a refused command stores nothing; a command the
    spoke refuses before storing (bad values) still spends its token and its nonce, and an
    admission refusal comes before any other."""
    _, client = await start_spoke(rate_per_principal=0.001, rate_burst=3)
    stored = await client.spawn("duration=1")  # token 1 of 3
    replayed = client.command("spawn_agent", command_pb2.SpawnAgentBody(profile="synthetic"))
    await client.spawn_env(replayed)  # token 2
    assert (await _refusal(client, replayed))[0] == "UNAUTHENTICATED"  # token 3: nonce seen
    bad = client.command(
        "spawn_agent", command_pb2.SpawnAgentBody(profile="synthetic", task="x", priority=99)
    )
    code, reason = await _refusal(client, bad)  # bucket empty: refused before its values
    assert (code, reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    code, reason = await _refusal(client, client.command("spawn_agent", _body()))
    assert (code, reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    agents = await redis_client.keys(f"federation:{SPOKE}:agent:*")
    assert len(agents) == 2  # the first spawn and the replayed one's original, nothing more
    assert stored.agent.agent_id


async def test_a_refused_spawn_still_spends_its_nonce(
    client: SpokeClient, redis_client: aioredis.Redis
) -> None:
    bad = client.command(
        "spawn_agent", command_pb2.SpawnAgentBody(profile="synthetic", task="x", priority=99)
    )
    assert (await _refusal(client, bad))[0] == "INVALID_ARGUMENT"
    assert (await _refusal(client, bad))[0] == "UNAUTHENTICATED"  # its nonce was claimed
    unknown = client.command("spawn_agent", command_pb2.SpawnAgentBody(profile="nope"))
    assert (await _refusal(client, unknown))[0] != "UNAUTHENTICATED"
    assert (await _refusal(client, unknown))[0] == "UNAUTHENTICATED"
    assert not await redis_client.keys(f"federation:{SPOKE}:agent:*")


def _body() -> command_pb2.SpawnAgentBody:
    return command_pb2.SpawnAgentBody(profile="synthetic", task="duration=1")
