"""The federation under test: real redis-server, spoked and hubd processes, plus echo servers.

Layout (every name is a spoke site with its own EmbeddedRedis):

* ``spoke-01`` … ``spoke-NN``: paused queues (agents stay QUEUED, nothing runs). The spawn
  and status arms use ``spoke-01``; the fan-out arms list the first N of them.
* ``runner``: a live queue (concurrency 4) for spawn-to-running and kill-to-gone.
* ``scale``: started only by the scale phase (concurrency 1).
* hubd ``main`` routes to every spoke; hubd ``fan-N`` to the first N paused spokes.
* ``echo`` and ``relay`` (a second process forwarding to ``echo``) for the gRPC floor.

Ports are picked free first, then written into the configs by ``write_federation``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from bullmq import Queue

from hubspoke import client as hub_client
from hubspoke import keys
from hubspoke.hub.federation_files import OPERATOR, FederationFiles, write_federation
from hubspoke.redis_server import EmbeddedRedis, pick_free_port
from hubspoke.spoke.keys import QUEUE_NAME, SpokeKeys
from hubspoke.trust import TrustStore

from .clients import READY_CODE, DirectClient
from .procs import Daemon

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
RUNNER = "runner"
SCALE = "scale"
READY_PROFILE = "ready"
HOST = "127.0.0.1"


_POLICY = """# The benchmark's operator may do everything (authorization is default-deny).
[[rule]]
name = "bench-allow-all"
principals = ["*"]
verbs = ["*"]
spokes = ["*"]
profiles = ["*"]
"""


_RATE = 10_000
"""Requests/s per principal: far above what two cores serve, so the limiter (whose Redis
script is part of every request's cost) runs but never refuses."""
_BURST = 10_000_000
"""Deep enough that the throughput arms' bursts never empty it."""


def spoke_name(i: int) -> str:
    return f"spoke-{i:02d}"


def _bin(name: str, module: str) -> list[str]:
    """The venv's console script, or ``python -m module`` when it is missing."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


@dataclass
class Site:
    """One spoke site: its Redis, its spoked and the address it serves on."""

    name: str
    redis: EmbeddedRedis
    address: str
    daemon: Daemon | None = None
    concurrency: int = 4

    @property
    def keys(self) -> SpokeKeys:
        return SpokeKeys(self.name)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.redis.url)

    def bull_queue(self, connection: aioredis.Redis) -> Queue:
        return Queue(QUEUE_NAME, {"connection": connection, "prefix": self.keys.prefix})


@dataclass
class Cluster:
    """Everything started by ``start`` and stopped (always) by ``stop``."""

    root: Path
    fanout_max: int
    ready_sock: Path
    sites: dict[str, Site] = field(default_factory=dict)
    hubs: dict[str, Daemon] = field(default_factory=dict)
    hub_addresses: dict[str, str] = field(default_factory=dict)
    hub_redis: EmbeddedRedis | None = None
    echo: Daemon | None = None
    relay: Daemon | None = None
    files: FederationFiles | None = None
    operator: keys.SigningKey | None = None
    policy_file: Path | None = None
    trust: TrustStore | None = None

    @property
    def redis_servers(self) -> list[EmbeddedRedis]:
        servers = [s.redis for s in self.sites.values()]
        return [*servers, self.hub_redis] if self.hub_redis is not None else servers

    async def start(self, fanout_ns: Iterable[int]) -> None:
        names = [*(spoke_name(i) for i in range(1, self.fanout_max + 1)), RUNNER, SCALE]
        for name in names:
            redis = EmbeddedRedis(self.root / "redis" / name)
            self.sites[name] = Site(name, redis, f"{HOST}:{pick_free_port()}")
        self.sites[SCALE].concurrency = 1
        self.hub_redis = EmbeddedRedis(self.root / "redis" / "hub")
        await asyncio.gather(*(r.start() for r in self.redis_servers))
        hub_address = f"{HOST}:{pick_free_port()}"
        self.files = write_federation(
            self.root / "federation",
            [(s.name, s.address, s.redis.url) for s in self.sites.values()],
            hub_address,
            self.hub_redis.url,
            spoke_profiles=self._profiles(),
        )
        self.policy_file = self.root / "federation" / "bench-policy.toml"
        self.policy_file.write_text(_POLICY)
        self.operator = keys.load_private(self.files.keys_dir / f"{OPERATOR}.key", OPERATOR)
        self.trust = TrustStore.from_file(self.files.trust_file)
        await asyncio.gather(*(self.start_spoke(n) for n in names if n != SCALE))
        for n in names:
            if n.startswith("spoke-"):
                await self.pause(n)
        self.hub_addresses["main"] = hub_address
        starts = [self._start_hub("main", hub_address, None)]
        for count in fanout_ns:
            address = f"{HOST}:{pick_free_port()}"
            self.hub_addresses[f"fan-{count}"] = address
            spokes = [self.sites[spoke_name(i)] for i in range(1, count + 1)]
            starts.append(self._start_hub(f"fan-{count}", address, spokes))
        env = {**os.environ, "PYTHONPATH": str(SCRIPTS_DIR)}
        self.echo = Daemon("echo", [sys.executable, "-m", "benchlib.echo"], self._log("echo"), env)
        await asyncio.gather(*starts, self.echo.start())
        self.relay = Daemon(
            "relay",
            [sys.executable, "-m", "benchlib.echo", "--forward", f"{HOST}:{self.echo.port}"],
            self._log("relay"),
            env,
        )
        await self.relay.start()

    def _profiles(self) -> str:
        """The spoke configs' tail: top-level keys without an environment variable, then
        the profiles."""
        argv = [sys.executable, "-c", READY_CODE, "{task}", str(self.ready_sock)]
        return (
            f"rate_burst = {_BURST}\n"
            "\n[profiles.synthetic]\n"
            f"\n[profiles.{READY_PROFILE}]\n"
            f"argv = {json.dumps(argv)}\n"
            "task_on_stdin = false\n"
            "task_pattern = '[A-Za-z0-9][A-Za-z0-9._-]*( [0-9.]+)?'\n"  # an id [seconds]
            "timeout_seconds = 600\n"
            "kill_grace_seconds = 2\n"
        )

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    async def start_spoke(self, name: str) -> None:
        site = self.sites[name]
        assert self.files is not None
        env = {
            **os.environ,
            "SPOKE_MAX_QUEUE_DEPTH": "100000000",
            "SPOKE_CONCURRENCY": str(site.concurrency),
            # Authorization is default-deny; the benchmark's operator may do everything.
            "SPOKE_POLICY_FILE": str(self.policy_file),
            # The per-principal rate limit still runs (its Redis script is part of every
            # request's cost) but never refuses: one client here drives thousands of ops/s.
            "SPOKE_RATE_PER_PRINCIPAL": str(_RATE),
        }
        argv = [*_bin("spoked", "spoke"), "--config", str(self.files.spoke_configs[name])]
        site.daemon = Daemon(name, argv, self._log(name), env)
        await site.daemon.start()

    async def stop_spoke(self, name: str) -> None:
        site = self.sites[name]
        if site.daemon is not None:
            await site.daemon.stop()

    async def _start_hub(self, key: str, address: str, spokes: list[Site] | None) -> None:
        """hubd configured through ``HUB_*`` variables only (hub/config.py): the generated
        hub.toml stays the operator's, and the benchmark names exactly the spokes it wants."""
        assert self.files is not None
        assert self.hub_redis is not None
        chosen = list(self.sites.values()) if spokes is None else spokes
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(
            {
                "HUB_NAME": self.files.hub_name,
                "HUB_KEY_FILE": str(self.files.keys_dir / f"{self.files.hub_name}.key"),
                "HUB_TRUST_FILE": str(self.files.trust_file),
                "HUB_REDIS_URL": self.hub_redis.url,
                "HUB_SPOKES": ",".join(f"{s.name}={s.address}" for s in chosen),
                "HUB_POLICY_FILE": str(self.policy_file),
                "HUB_RATE_PER_PRINCIPAL": str(_RATE),
                "HUB_RATE_BURST": str(_BURST),
            }
        )
        argv = [*_bin("hubd", "hub"), "--listen", address]
        self.hubs[key] = daemon = Daemon(f"hub-{key}", argv, self._log(f"hub-{key}"), env)
        await daemon.start()

    async def pause(self, name: str) -> None:
        """Pause a spoke's bullmq queue directly in its Redis: agents stay QUEUED."""
        async with self.sites[name].client() as r:
            await self.sites[name].bull_queue(r).pause()

    def direct(self, name: str) -> DirectClient:
        assert self.operator is not None
        assert self.trust is not None
        return DirectClient(self.sites[name].address, name, self.operator, self.trust)

    def hub(self, key: str = "main") -> hub_client.Client:
        assert self.files is not None
        return hub_client.client_from_config(
            self.files.hubctl_config, hub=self.hub_addresses[key], timeout_s=20.0, env={}
        )

    def pids(self) -> dict[str, int]:
        """Every live process by role name (``spoke:<name>``, ``redis:<name>``, …)."""
        out: dict[str, int] = {}
        for site in self.sites.values():
            if site.daemon is not None and site.daemon.port:
                out[f"spoke:{site.name}"] = site.daemon.pid
            if site.redis.pid is not None:
                out[f"redis:{site.name}"] = site.redis.pid
        if self.hub_redis is not None and self.hub_redis.pid is not None:
            out["redis:hub"] = self.hub_redis.pid
        for key, daemon in self.hubs.items():
            out[f"hub:{key}"] = daemon.pid
        for extra in (self.echo, self.relay):
            if extra is not None and extra.port:
                out[extra.name] = extra.pid
        return out

    async def stop(self) -> None:
        """Stop everything, daemons before their Redis; never raises for one failure."""
        daemons = [
            *(s.daemon for s in self.sites.values() if s.daemon is not None),
            *self.hubs.values(),
            *(d for d in (self.relay, self.echo) if d is not None),
        ]
        results = await asyncio.gather(*(d.stop() for d in daemons), return_exceptions=True)
        for d in daemons:
            d.kill_now()
        results += await asyncio.gather(
            *(r.stop() for r in self.redis_servers), return_exceptions=True
        )
        for r in self.redis_servers:
            with contextlib.suppress(Exception):
                await r.kill()
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            print(f"bench: teardown errors: {failed}", file=sys.stderr)
