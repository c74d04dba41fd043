"""tests/hub/test_forward_lease.py (connect-mode spoke leases across hubds) on the cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hubspoke.hub.forward_lease import LeaseStore

from ..test_forward_lease import *  # noqa: F403  (re-collected with the fixture below)
from .conftest import cluster_client


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[LeaseStore, LeaseStore]]:
    """Two hubds' lease stores on the cluster."""
    a = cluster_client(redis_url, decode_responses=True)
    b = cluster_client(redis_url, decode_responses=True)
    try:
        yield LeaseStore(a, "hub", 15.0), LeaseStore(b, "hub", 15.0)
    finally:
        await a.aclose()
        await b.aclose()
