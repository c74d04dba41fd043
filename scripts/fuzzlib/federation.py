"""A real hub and spoke in this process, on loopback, for the adversarial runs.

Layout: one private redis-server (or a given URL) shared by the hub and ``spoke-1``. The
hub's config also names ``spoke-2`` at spoke-1's address: a *misrouting* hub, so that a
relay for another spoke really reaches a spoke and the spoke itself must refuse it. Only
the ``synthetic`` profile is configured, so nothing an input smuggles through can run a
shell. Ports are chosen before start so that restarts come back on the same addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import keys
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig
from hubspoke.hub.federation_files import OPERATOR, FederationFiles, write_federation
from hubspoke.redis_server import EmbeddedRedis, pick_free_port
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.trust import TrustStore

HUB: Final = "hub"
SPOKE: Final = "spoke-1"
MISROUTED: Final = "spoke-2"
"""In the hub's config and trust store, but its address is spoke-1's."""
HOST: Final = "127.0.0.1"
PROFILES: Final = "\n[profiles.synthetic]\n"
CLIENT_MAX_BYTES: Final = 64 * 1024 * 1024
"""The fuzz client's own message limit: far above the servers', so they do the refusing."""

RATE: Final = 1_000_000.0
BURST: Final = 1_000_000_000
"""Per-principal rate limits so high they never refuse: the limiter's Redis script still
runs on every admitted request, but a flood of *valid* replay primers must not turn into
RATE_LIMITED answers that would hide what the nonce check says."""


@dataclass
class Keys:
    operator: keys.SigningKey
    hub: keys.SigningKey
    spoke: keys.SigningKey
    intruder: keys.SigningKey
    """A well-formed key that no trust store lists."""


@dataclass
class Federation:
    root: Path
    files: FederationFiles
    keys: Keys
    trust: TrustStore
    redis_url: str
    hub_port: int
    spoke_port: int
    hub_config: HubConfig
    spoke_config: SpokeConfig
    hub: HubApp | None = None
    spoke: SpokeApp | None = None
    redis: aioredis.Redis | None = None
    hub_channel: grpc.aio.Channel | None = None
    spoke_channel: grpc.aio.Channel | None = None
    _embedded: EmbeddedRedis | None = None
    restarts: dict[str, int] = field(default_factory=lambda: {"hub": 0, "spoke": 0})
    teardown_timeouts: list[str] = field(default_factory=list)
    stuck: list[dict[str, object]] = field(default_factory=list)
    """Agents the positive class waited for in vain (evidence for the report)."""

    @property
    def hub_address(self) -> str:
        return f"{HOST}:{self.hub_port}"

    @property
    def spoke_address(self) -> str:
        return f"{HOST}:{self.spoke_port}"

    def channel(self, server: str) -> grpc.aio.Channel:
        ch = self.hub_channel if server == "hub" else self.spoke_channel
        if ch is None:
            raise RuntimeError("federation is not started")
        return ch

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_servers(self) -> None:
        self.spoke = SpokeApp(self.spoke_config)
        await self.spoke.start()
        self.hub = HubApp(self.hub_config)
        await self.hub.start()
        await self._open_channels()

    async def restart_spoke(self) -> None:
        """Stop spoked and start a new one on the same port and the same Redis."""
        if self.spoke is not None:
            await self.spoke.shutdown(grace=2.0)
        self.spoke = SpokeApp(self.spoke_config)
        await _retry_bind(self.spoke.start)
        self.restarts["spoke"] += 1
        await self._open_channels()

    async def restart_hub(self) -> None:
        if self.hub is not None:
            await self.hub.shutdown()
        self.hub = HubApp(self.hub_config)
        await _retry_bind(self.hub.start)
        self.restarts["hub"] += 1
        await self._open_channels()

    async def _open_channels(self) -> None:
        for ch in (self.hub_channel, self.spoke_channel):
            if ch is not None:
                await ch.close()
        opts = [
            ("grpc.max_send_message_length", CLIENT_MAX_BYTES),
            ("grpc.max_receive_message_length", CLIENT_MAX_BYTES),
            ("grpc.enable_retries", 0),
        ]
        self.hub_channel = grpc.aio.insecure_channel(self.hub_address, options=opts)
        self.spoke_channel = grpc.aio.insecure_channel(self.spoke_address, options=opts)
        for ch in (self.hub_channel, self.spoke_channel):
            await asyncio.wait_for(ch.channel_ready(), timeout=10)

    async def close(self) -> None:
        """Stop everything; a step that hangs is abandoned after a minute and recorded."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            *((f"channel-{i}", ch.close) for i, ch in enumerate(self._channels())),
        ]
        if self.hub is not None:
            steps.append(("hub", self.hub.shutdown))
        if self.spoke is not None:
            spoke = self.spoke
            steps.append(("spoke", lambda: spoke.shutdown(grace=2.0)))
        if self.redis is not None:
            steps.append(("redis-client", self.redis.aclose))
        if self._embedded is not None:
            steps.append(("redis-server", self._embedded.stop))
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=60)
            except TimeoutError:
                self.teardown_timeouts.append(name)

    def _channels(self) -> list[grpc.aio.Channel]:
        return [ch for ch in (self.hub_channel, self.spoke_channel) if ch is not None]

    # -- observations -------------------------------------------------------------------------

    async def health(self, server: str, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel(server))
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def agent_count(self) -> int:
        """Agent records on spoke-1 (every queued agent has one, whatever its state)."""
        assert self.redis is not None
        n = 0
        async for _ in self.redis.scan_iter(
            match=SpokeKeys(SPOKE).agent("*"), count=1000, _type="HASH"
        ):
            n += 1
        return n

    async def agent_state(self, agent_id: str) -> str:
        assert self.redis is not None
        raw = await self.redis.hget(SpokeKeys(SPOKE).agent(agent_id), "state")
        return raw.decode() if isinstance(raw, bytes) else ""

    async def redis_memory(self) -> dict[str, int]:
        assert self.redis is not None
        info = await self.redis.info("memory")
        return {"used_memory": int(info["used_memory"]), "keys": int(await self.redis.dbsize())}


async def _retry_bind(start: object) -> None:
    """A port just released may take a moment to bind again."""
    for attempt in range(20):
        try:
            await start()  # type: ignore[operator]
        except OSError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.25)
        else:
            return


async def start(root: Path, redis_url: str | None = None) -> Federation:
    """Write keys and configs into ``root`` and start Redis (unless given), spoke and hub."""
    embedded: EmbeddedRedis | None = None
    if redis_url is None:
        embedded = EmbeddedRedis(root / "redis")
        await embedded.start()
        redis_url = embedded.url
    hub_port, spoke_port = pick_free_port(), pick_free_port()
    spoke_addr = f"{HOST}:{spoke_port}"
    files = write_federation(
        root / "federation",
        [(SPOKE, spoke_addr, redis_url), (MISROUTED, spoke_addr, redis_url)],
        f"{HOST}:{hub_port}",
        redis_url,
        hub_name=HUB,
        spoke_profiles=PROFILES,
    )
    kd = files.keys_dir
    fed_keys = Keys(
        operator=keys.load_private(kd / f"{OPERATOR}.key", OPERATOR),
        hub=keys.load_private(kd / f"{HUB}.key", HUB),
        spoke=keys.load_private(kd / f"{SPOKE}.key", SPOKE),
        intruder=keys.generate("intruder"),
    )
    hub_cfg = HubConfig.load(files.hub_config, {}).replace(
        rate_per_principal=RATE, rate_burst=BURST, log_level="warning"
    )
    spoke_cfg = dataclasses.replace(
        SpokeConfig.load(files.spoke_configs[SPOKE], {}),
        rate_per_principal=RATE,
        rate_burst=BURST,
        concurrency=4,
        stalled_interval_ms=1000,
        lock_duration_ms=4000,
        kill_wait_s=5.0,
        log_level="warning",
    )
    fed = Federation(
        root=root,
        files=files,
        keys=fed_keys,
        trust=TrustStore.from_file(files.trust_file),
        redis_url=redis_url,
        hub_port=hub_port,
        spoke_port=spoke_port,
        hub_config=hub_cfg,
        spoke_config=spoke_cfg,
        _embedded=embedded,
    )
    fed.redis = aioredis.Redis.from_url(redis_url)
    try:
        await fed.start_servers()
    except BaseException:
        with contextlib.suppress(Exception):
            await fed.close()
        raise
    return fed
