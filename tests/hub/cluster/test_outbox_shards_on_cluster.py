"""tests/hub/test_outbox_shards.py on the cluster, and the shards spread over its primaries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from hubspoke import testing
from hubspoke.hub.outbox import Outbox, OutboxConfig

from ..test_outbox_shards import *  # noqa: F403  (re-collected with the fixture below)
from ..test_outbox_shards import held, spokes_in_distinct_shards
from .conftest import cluster_client


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    c = cluster_client(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


async def test_outboxes_of_several_spokes_spread_over_the_primaries(
    client: redis.asyncio.Redis, hub_cluster: testing.EmbeddedRedisCluster
) -> None:
    outbox = Outbox(client, OutboxConfig("hub"), 5.0)
    spokes = spokes_in_distinct_shards(8)
    for i, spoke in enumerate(spokes):
        assert await outbox.hold(held(spoke, f"c-{i}"))
    assert await outbox.total() == len(spokes)
    assert await outbox.spokes() == sorted(spokes)
    keys = await hub_cluster.keys("federation:hub:*outbox*")
    assert len(await hub_cluster.primaries_of(keys)) >= 2
