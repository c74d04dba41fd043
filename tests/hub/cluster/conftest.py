"""The hub's tests on a local Redis Cluster (issue 11): one 3-primary cluster for the
session (``hubspoke.testing.EmbeddedRedisCluster``), emptied before each test.

The modules here re-collect the hub's own test modules (``from ..test_x import *``) and so
run them unchanged with ``redis_url`` naming the cluster (``redis+cluster://``): the hub
builds its client with ``hubspoke.redis_access.open_client``, a ``RedisCluster``. Fixtures
those modules define with ``redis.asyncio.Redis.from_url`` are redefined beside the import
with :func:`cluster_client`. Skipped, with the reason, where no cluster can be formed (no
redis-cli beside redis-server, or it fails).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from hubspoke import testing
from hubspoke.redis_access import open_client


@pytest.fixture(scope="session")
def hub_cluster(
    tmp_path_factory: pytest.TempPathFactory, _venv_bin_on_path: None
) -> Iterator[testing.EmbeddedRedisCluster]:
    """A started 3-primary cluster for the session (sync: see ``redis_server_url``)."""
    cluster = testing.EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    with testing.LoopThread("redis-cluster") as loop:
        try:
            loop.run(cluster.start())
        except testing.RedisServerError as exc:
            pytest.skip(f"no local Redis Cluster: {exc}")
        try:
            yield cluster
        finally:
            loop.run(cluster.stop())


@pytest.fixture
async def redis_url(hub_cluster: testing.EmbeddedRedisCluster) -> str:
    """The cluster's ``redis+cluster://`` URL, every node emptied for this test."""
    await hub_cluster.flushall()
    return hub_cluster.url


def cluster_client(url: str, *, decode_responses: bool) -> redis.asyncio.Redis:
    """A client of the cluster (a ``RedisCluster``), as the hub builds one."""
    return open_client(url, 5.0, decode_responses=decode_responses)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client on the emptied cluster, returning bytes (the suite's ``redis_client``)."""
    client = cluster_client(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()
