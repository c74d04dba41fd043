"""tests/hub/test_placement.py (claims, placement counters, drains) on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from ..test_placement import *  # noqa: F403  (re-collected with the cluster's redis_url)
from .conftest import cluster_client


@pytest.fixture
async def text_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = cluster_client(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
