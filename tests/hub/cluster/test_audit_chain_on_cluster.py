"""tests/hub/test_audit_chain.py (the hash-chained audit log) on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from ..test_audit_chain import *  # noqa: F403  (re-collected with the cluster's redis_url)
from .conftest import cluster_client


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    c = cluster_client(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()
