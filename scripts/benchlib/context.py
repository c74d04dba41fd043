"""What the arms share: the cluster, open clients, the ready socket and the op counts."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from hubspoke import client as hub_client

from .clients import DirectClient, ReadySocket
from .cluster import Cluster


@dataclass(frozen=True, slots=True)
class Sizes:
    """Op counts per arm and round, and the scale phase's backlogs."""

    rpc_lat: int
    rpc_tput: int
    cpu_lat: int
    run_lat: int
    kill_lat: int
    fan_lat: int
    fanout: tuple[int, ...]
    scale: tuple[int, ...]
    scale_probe: int


QUICK = Sizes(
    rpc_lat=40,
    rpc_tput=120,
    cpu_lat=300,
    run_lat=8,
    kill_lat=3,
    fan_lat=20,
    fanout=(1, 2, 4),
    scale=(1_000, 3_000),
    scale_probe=10,
)
FULL = Sizes(
    rpc_lat=300,
    rpc_tput=1000,
    cpu_lat=3000,
    run_lat=60,
    kill_lat=20,
    fan_lat=100,
    fanout=(1, 2, 4, 8, 16),
    scale=(1_000, 10_000, 100_000, 1_000_000),
    scale_probe=60,
)

SPAWN_SPOKE = "spoke-01"
SEED_PER_SPOKE = 10
"""Agents queued on each paused spoke before the rounds: fan-out pages are full."""


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Env:
    cluster: Cluster
    ready: ReadySocket
    sizes: Sizes
    concurrency: int
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    spoke: DirectClient | None = None
    runner: DirectClient | None = None
    hub: hub_client.Client | None = None
    fan_hubs: dict[int, hub_client.Client] = field(default_factory=dict)
    status_pool: list[str] = field(default_factory=list)
    """Agents on spoke-01, spawned through the hub (so its agent index knows them)."""
    task: str = ""
    request_size: int = 0
    """Bytes of a signed SpawnAgent request: the echo floor's message size."""

    async def open(self) -> None:
        from .cluster import READY_PROFILE, RUNNER, spoke_name

        c = self.cluster
        self.spoke = await self.stack.enter_async_context(c.direct(SPAWN_SPOKE))
        self.runner = await self.stack.enter_async_context(c.direct(RUNNER))
        self.hub = await self.stack.enter_async_context(c.hub("main"))
        for n in self.sizes.fanout:
            self.fan_hubs[n] = await self.stack.enter_async_context(c.hub(f"fan-{n}"))
        self.task = new_id()
        request: Any = self.spoke.spawn_request(READY_PROFILE, self.task)
        self.request_size = request.ByteSize()
        for i in range(1, max(self.sizes.fanout) + 1):
            async with c.direct(spoke_name(i)) as d:
                for _ in range(SEED_PER_SPOKE):
                    await d.spawn(READY_PROFILE, new_id())
        for _ in range(50):
            agent = await self.hub.spawn(SPAWN_SPOKE, READY_PROFILE, new_id())
            self.status_pool.append(agent.agent_id)

    async def close(self) -> None:
        await self.stack.aclose()
