"""hub/dedupe.py against a real Redis: the hub's claim of an owner's dedupe key for the spoke
a selector spawn was placed on (the helper hub/placement_route.py calls)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.hub import dedupe


async def test_the_first_claim_holds_until_its_ttl(redis_client: redis.asyncio.Redis) -> None:
    claims = dedupe.DedupeClaims(redis_client, "hub", 5.0)
    assert await claims.held("alice", "build-1") is None
    first = await claims.claim("alice", "build-1", "spoke-1", "cmd-a", ttl_s=0.5)
    assert first == dedupe.DedupeClaim("spoke-1", "cmd-a")
    # A second placement of the key (this hub or another) is told where the first went.
    second = await claims.claim("alice", "build-1", "spoke-2", "cmd-b", ttl_s=0.5)
    assert second == first
    assert await claims.held("alice", "build-1") == first
    # Another owner's key of the same name is its own.
    assert await claims.claim("bob", "build-1", "spoke-2", "cmd-c", 0.5) == dedupe.DedupeClaim(
        "spoke-2", "cmd-c"
    )
    ttl = await redis_client.pttl(dedupe.claim_key("hub", "alice", "build-1"))
    assert 0 < ttl <= 500
    async with asyncio.timeout(5):
        while await claims.held("alice", "build-1") is not None:  # noqa: ASYNC110  # a TTL in Redis
            await asyncio.sleep(0.05)
    assert await claims.claim("alice", "build-1", "spoke-2", "cmd-d", 5) == dedupe.DedupeClaim(
        "spoke-2", "cmd-d"
    )


def test_claim_keys_are_hashed_under_the_hubs_hash_tag() -> None:
    key = dedupe.claim_key("hub-a", "al:ice", "k")
    assert key.startswith("federation:hub:{hub-a}:dedupe:")
    assert "al:ice" not in key
    assert key != dedupe.claim_key("hub-a", "al", "ice:k")


def test_spawn_key_is_the_bodys_own_or_derived() -> None:
    body = command_pb2.SpawnAgentBody(profile="synthetic", task="t", dedupe_key="k-1")
    assert dedupe.spawn_key(body) == "k-1"
    body = command_pb2.SpawnAgentBody(profile="synthetic", task="t", dedupe_from_task=True)
    assert dedupe.spawn_key(body).startswith("task-")
    assert dedupe.spawn_key(command_pb2.SpawnAgentBody(profile="p", task="t")) == ""
    with pytest.raises(errors.InvalidCommandError):
        dedupe.spawn_key(command_pb2.SpawnAgentBody(dedupe_key="a b"))
    with pytest.raises(errors.InvalidCommandError):
        dedupe.spawn_key(command_pb2.SpawnAgentBody(dedupe_key="k", dedupe_from_task=True))


async def test_a_redis_down_is_unavailable() -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    claims = dedupe.DedupeClaims(client, "hub", 2.0)
    try:
        with pytest.raises(errors.BackendUnavailableError):
            await claims.held("alice", "k")
        with pytest.raises(errors.BackendUnavailableError):
            await claims.claim("alice", "k", "spoke-1", "c", 1)
    finally:
        await client.aclose()
