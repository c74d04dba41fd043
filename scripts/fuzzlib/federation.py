"""A real hub and spoke in this process, on loopback, for the adversarial runs: the harness's
:class:`hubspoke.testing.InProcessFederation`, plus the fuzz client's channels and what the
run observes (agent records, Redis memory, health).

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
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import keys, testing
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig
from hubspoke.hub.federation_files import OPERATOR, FederationFiles
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.testing import EmbeddedRedis, InProcessFederation
from hubspoke.trust import TrustStore

HUB: Final = "hub"
SPOKE: Final = "spoke-1"
MISROUTED: Final = "spoke-2"
"""In the hub's config and trust store, but its address is spoke-1's."""
PROFILES: Final = (
    "\n[profiles.synthetic]\n"
    # Approvals: the operator's spawns of "held" wait for one approval by "approver".
    '\n[profiles.held]\nargv = ["true"]\ntask_on_stdin = false\n'
)
APPROVER: Final = "approver"
APPROVAL_RULES: Final = f"""
[[rule]]
name = "held-needs-one-approval"
principals = ["operator"]
verbs = ["spawn"]
scope = "own"
spokes = ["*"]
profiles = ["held"]
approvals = 1
approvers = ["{APPROVER}"]

[[rule]]
name = "approver"
principals = ["{APPROVER}"]
verbs = ["read", "approve", "reject"]
scope = "any"
spokes = ["*"]
"""
CLIENT_MAX_BYTES: Final = 64 * 1024 * 1024
"""The fuzz client's own message limit: far above the servers', so they do the refusing."""
SPOKE_GRACE_S: Final = 2.0

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
    approver: keys.SigningKey = field(default_factory=lambda: keys.generate(APPROVER))
    """A trusted client that may approve the operator's "held" spawns (APPROVAL_RULES); in
    a federation that does not trust it (tenants.py), a key of that name nobody lists."""


def _hub_config(config: HubConfig) -> HubConfig:
    return config.replace(rate_per_principal=RATE, rate_burst=BURST, log_level="warning")


def _spoke_config(config: SpokeConfig) -> SpokeConfig:
    return dataclasses.replace(
        config,
        rate_per_principal=RATE,
        rate_burst=BURST,
        # The operator's valid primers may queue faster than they run: as with the rate, the
        # quota still runs (in the create script) but never refuses one of them.
        max_queued_per_principal=config.max_queue_depth,
        concurrency=4,
        stalled_interval_ms=1000,
        lock_duration_ms=4000,
        kill_wait_s=5.0,
        log_level="warning",
    )


@dataclass
class Federation:
    root: Path
    harness: InProcessFederation
    keys: Keys
    redis_url: str
    redis: aioredis.Redis | None = None
    hub_channel: grpc.aio.Channel | None = None
    spoke_channel: grpc.aio.Channel | None = None
    _embedded: EmbeddedRedis | None = None
    restarts: dict[str, int] = field(default_factory=lambda: {"hub": 0, "spoke": 0})
    _teardown_timeouts: list[str] = field(default_factory=list)
    stuck: list[dict[str, object]] = field(default_factory=list)
    """Agents the positive class waited for in vain (evidence for the report)."""

    @property
    def files(self) -> FederationFiles:
        return self.harness.files

    @property
    def trust(self) -> TrustStore:
        return self.harness.trust

    @property
    def hub(self) -> HubApp | None:
        return self.harness.hub

    @property
    def spoke(self) -> SpokeApp | None:
        return self.harness.spokes.get(SPOKE)

    @property
    def spoke_config(self) -> SpokeConfig:
        return self.spoke.config if self.spoke is not None else self.harness.spoke_config(SPOKE)

    @property
    def hub_address(self) -> str:
        return self.harness.hub_address

    @property
    def spoke_address(self) -> str:
        return self.harness.address(SPOKE)

    @property
    def teardown_timeouts(self) -> list[str]:
        return [*self.harness.teardown_timeouts, *self._teardown_timeouts]

    def channel(self, server: str) -> grpc.aio.Channel:
        ch = self.hub_channel if server == "hub" else self.spoke_channel
        if ch is None:
            raise RuntimeError("federation is not started")
        return ch

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_servers(self) -> None:
        await self.harness.start(spokes=[SPOKE])
        await self._open_channels()

    async def restart_spoke(self) -> None:
        """Stop spoked and start a new one on the same port and the same Redis."""
        await self.harness.restart_spoke(SPOKE)
        self.restarts["spoke"] += 1
        await self._open_channels()

    async def restart_hub(self) -> None:
        await self.harness.restart_hub()
        self.restarts["hub"] += 1
        await self._open_channels()

    async def _open_channels(self) -> None:
        for ch in (self.hub_channel, self.spoke_channel):
            if ch is not None:
                await ch.close(None)
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
        await self._steps(
            [
                (f"channel-{i}", functools.partial(ch.close, None))
                for i, ch in enumerate(self._channels())
            ]
        )
        await self.harness.stop()  # the hub, then the spoke; records its own hangs
        after: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.redis is not None:
            after.append(("redis-client", self.redis.aclose))
        if self._embedded is not None:
            after.append(("redis-server", self._embedded.stop))
        await self._steps(after)

    async def _steps(self, steps: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=60)
            except TimeoutError:
                self._teardown_timeouts.append(name)

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

    async def add_member(self, name: str) -> None:
        """Record an enrolled spoke named ``name`` (a fresh key) in the hub's membership, as
        an enrolment would, so that a RemoveSpoke of it has something to remove."""
        from hubspoke import keys
        from hubspoke.gen.federation.v1 import enrol_pb2
        from hubspoke.hub.membership_store import MembershipStore

        key = keys.generate(name)
        store = MembershipStore.from_url(self.redis_url, HUB, 5.0)
        try:
            await store.add(
                enrol_pb2.Member(
                    name=name,
                    key_id=key.key_id,
                    public_key=keys.encode_public(key.public),
                    mode="dial",
                    address="127.0.0.1:9",
                )
            )
        finally:
            await store.close()

    async def agent_state(self, agent_id: str) -> str:
        assert self.redis is not None
        raw = await self.redis.hget(SpokeKeys(SPOKE).agent(agent_id), "state")
        return raw.decode() if isinstance(raw, bytes) else ""

    async def redis_memory(self) -> dict[str, int]:
        assert self.redis is not None
        info = await self.redis.info("memory")
        return {"used_memory": int(info["used_memory"]), "keys": int(await self.redis.dbsize())}


async def start(root: Path, redis_url: str | None = None) -> Federation:
    """Write keys and configs into ``root`` and start Redis (unless given), spoke and hub."""
    embedded: EmbeddedRedis | None = None
    if redis_url is None:
        embedded = EmbeddedRedis(root / "redis")
        await embedded.start()
        redis_url = embedded.url
    spoke_addr = f"{testing.HOST}:{testing.pick_free_port()}"
    harness = InProcessFederation(
        root / "federation",
        [SPOKE, MISROUTED],
        hub_name=HUB,
        spoke_profiles=PROFILES,
        redis_url=redis_url,
        addresses={SPOKE: spoke_addr, MISROUTED: spoke_addr},
        configure_hub=_hub_config,
        configure_spoke=_spoke_config,
        spoke_grace_s=SPOKE_GRACE_S,
    )
    files = await harness.prepare()
    approver = keys.generate(APPROVER)
    keys.write_keypair(approver, files.keys_dir)
    with files.trust_file.open("a") as fh:
        fh.write(
            f'\n[[peer]]\nname = "{APPROVER}"\nrole = "client"\n'
            f'keys = ["{keys.encode_public(approver.public)}"]\n'
        )
    with (files.root / "policy.toml").open("a") as fh:
        fh.write(APPROVAL_RULES)
    fed = Federation(
        root=root,
        harness=harness,
        keys=Keys(
            operator=harness.key(OPERATOR),
            hub=harness.key(HUB),
            spoke=harness.key(SPOKE),
            intruder=keys.generate("intruder"),
            approver=approver,
        ),
        redis_url=redis_url,
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
