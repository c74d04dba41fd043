"""tests/hub/test_placement.py (claims, placement counters, drains) on a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from hubspoke.hub.placement import Candidate
from hubspoke.hub.placement_claim import ClaimStore, placed_key

from ..test_placement import *  # noqa: F403  (re-collected with the cluster's redis_url)
from .conftest import cluster_client


@pytest.fixture
async def text_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = cluster_client(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_hubs_racing_for_one_command_place_it_once_and_count_it_once(
    redis_url: str,
) -> None:
    """Claim and counters are separate single-slot steps here: several hubs placing one
    command at once still agree on one spoke, and only the winner's count stays."""
    clients = [cluster_client(redis_url, decode_responses=True) for _ in range(4)]
    try:
        stores = [ClaimStore(c, "hub", 5.0) for c in clients]
        candidates = [
            Candidate("a", base=0, capacity=4, observed_ms=0),
            Candidate("b", base=0, capacity=4, observed_ms=0),
        ]
        results = await asyncio.gather(
            *(
                s.place("op", "once", order, claim_ttl_s=60, dry_run=False)
                for s in stores
                for order in (candidates, candidates[::-1])
            )
        )
        spokes = {r.spoke for r in results}
        assert len(spokes) == 1, results
        assert sum(not r.already for r in results) == 1
        counted = [await clients[0].zcard(placed_key("hub", s)) for s in ("a", "b")]
        assert sum(counted) == 1, counted
        assert await stores[0].claimed("op", "once") == spokes.pop()
    finally:
        for c in clients:
            await c.aclose()
