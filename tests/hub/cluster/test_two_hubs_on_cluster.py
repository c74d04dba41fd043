"""tests/e2e/test_two_hubs.py (two hubds on one Redis, one SIGKILLed mid-burst)
with the hubds' Redis on the cluster and the spoke's on a private server."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubspoke import testing

from ...e2e.test_two_hubs import *  # noqa: F403  (re-collected with the fixture below)
from ...e2e.test_two_hubs import HUB_ENV, SPOKE


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(tmp_path / "fed", [SPOKE], hub_redis=redis_url, hub_env=HUB_ENV)
    try:
        await federation.start()
        yield federation
    finally:
        spoked = federation.spoked(SPOKE)
        if spoked.running:
            spoked.signal(signal.SIGCONT)
        await federation.stop()
