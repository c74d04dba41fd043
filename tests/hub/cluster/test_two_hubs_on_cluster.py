"""tests/e2e/test_two_hubs.py (two hubds on one Redis, one SIGKILLed mid-burst)
with the hubds' Redis on the cluster and the spoke's on a private server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubspoke import testing

from ...e2e.conftest import stoppable_federation
from ...e2e.test_two_hubs import *  # noqa: F403  (re-collected with the fixture below)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    async with stoppable_federation(tmp_path / "fed", hub_redis=redis_url) as federation:
        yield federation
