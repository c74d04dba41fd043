"""A real hub in front of a real spoke on one real Redis, for end-to-end tests (the
harness's in-process federation, so the servers run on the test's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hubspoke import client as hc
from hubspoke import testing
from hubspoke.gen.federation.v1 import agent_pb2
from hubspoke.hub.federation_files import FederationFiles

REPO = Path(__file__).resolve().parents[2]
SPOKE = "spoke-1"
OUTBOX_HUB_ENV: dict[str, str] = {
    "HUB_PROBE_INTERVAL_S": "0.3",
    "HUB_PROBE_TIMEOUT_S": "0.3",
    "HUB_CIRCUIT_FAILURES": "2",
    "HUB_CIRCUIT_OPEN_S": "1",
    "HUB_SPOKE_CALL_TIMEOUT_S": "1",
    "HUB_OUTBOX_POLL_S": "0.2",
    "HUB_OUTBOX_RETRY_BASE_S": "0.2",
    "HUB_OUTBOX_RETRY_MAX_S": "1",
    "HUB_OUTBOX_LEASE_S": "2",
    "HUB_RATE_PER_PRINCIPAL": "0",
}
"""A hub that finds a stopped spoke in a second and tries its outbox every 0.2 s."""
Agent = agent_pb2.Agent


@dataclass
class Federation:
    files: FederationFiles
    hub_address: str

    def client(self) -> hc.Client:
        return hc.client_from_config(self.files.hubctl_config, hub=self.hub_address, env={})

    async def hubctl(self, *argv: str) -> tuple[int, Any, str]:
        """Run hubctl in a subprocess (the hub and spoke keep serving on this loop)."""
        run = await testing.run_hubctl(
            self.files.hubctl_config, self.hub_address, *argv, timeout_s=45
        )
        doc: Any = run.stdout
        if "--json" in argv and run.stdout.strip() and "watch" not in argv:  # watch: JSON lines
            doc = run.doc()
        return run.code, doc, run.stderr


@pytest.fixture
async def federation(tmp_path: Path, redis_url: str) -> AsyncIterator[Federation]:
    fed = testing.InProcessFederation(tmp_path, ["spoke-1"], redis_url=redis_url)
    try:
        await fed.start()
        yield Federation(fed.files, fed.hub_address)
    finally:
        await fed.stop()


async def wait_final(client: hc.Client, agent_id: str, timeout_s: float = 20) -> Agent:
    async with asyncio.timeout(timeout_s):
        while True:
            agent = await client.get(agent_id)
            if agent.state in hc.FINAL_STATES:
                return agent
            await asyncio.sleep(0.1)


async def wait_state(client: hc.Client, agent_id: str, state: int, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if (await client.get(agent_id)).state == state:
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def stoppable_federation(
    root: Path,
    *,
    redis_url: str | None = None,
    hub_redis: str | None = None,
    spoke_env: dict[str, str] | None = None,
) -> AsyncIterator[testing.Federation]:
    """A started federation of one spoke (``SPOKE``) and a hub with ``OUTBOX_HUB_ENV``, whose
    spoked a test may SIGSTOP: it is resumed before everything stops. ``hub_redis``: the
    hub's state elsewhere (a Redis Cluster), the spoke on a private server."""
    federation = testing.Federation(
        root,
        [SPOKE],
        redis_url=redis_url,
        hub_redis=hub_redis,
        hub_env=OUTBOX_HUB_ENV,
        spoke_env=spoke_env,
    )
    try:
        await federation.start()
        yield federation
    finally:
        spoked = federation.spoked(SPOKE)
        if spoked.running:
            spoked.signal(signal.SIGCONT)
        await federation.stop()
