"""The federation under test, from the harness (:class:`hubspoke.testing.Federation`): real
redis-server, spoked and hubd processes, plus echo servers.

Layout (every name is a spoke site with its own EmbeddedRedis):

* ``spoke-01`` … ``spoke-NN``: paused queues (agents stay QUEUED, nothing runs). The spawn
  and status arms use ``spoke-01``; the fan-out arms list the first N of them.
* ``runner``: a live queue (concurrency 4) for spawn-to-running and kill-to-gone.
* ``scale``: started only by the scale phase (concurrency 1).
* hubd ``main`` routes to every spoke; hubd ``fan-N`` to the first N paused spokes.
* ``echo`` and ``relay`` (a second process forwarding to ``echo``) for the gRPC floor.
* ``floor_signed``: the design floor of a signed spawn on ``spoke-01``'s Redis
  (:mod:`benchlib.floor_signed`).

The harness picks the ports and writes them into the configs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from bullmq import Queue

from hubspoke import client as hub_client
from hubspoke import keys, testing
from hubspoke.hub.federation_files import FederationFiles
from hubspoke.spoke.keys import QUEUE_NAME, SpokeKeys
from hubspoke.testing import Daemon, EmbeddedRedis
from hubspoke.trust import TrustStore

from .clients import READY_CODE, DirectClient

SCRIPTS_DIR = Path(__file__).resolve().parents[1]
RUNNER = "runner"
SCALE = "scale"
READY_PROFILE = "ready"
READY_TIMEOUT_S = 60.0


_RATE = 10_000
"""Requests/s per principal: far above what two cores serve, so the limiter (whose Redis
script is part of every request's cost) runs but never refuses."""
_BURST = 10_000_000
"""Deep enough that the throughput arms' bursts never empty it."""


def spoke_name(i: int) -> str:
    return f"spoke-{i:02d}"


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
    echo: Daemon | None = None
    relay: Daemon | None = None
    floor_signed: Daemon | None = None
    federation: testing.Federation = field(init=False)

    def __post_init__(self) -> None:
        names = [*(spoke_name(i) for i in range(1, self.fanout_max + 1)), RUNNER, SCALE]
        self.federation = testing.Federation(
            self.root,
            names,
            spoke_profiles=self._profiles(),
            ready_timeout_s=READY_TIMEOUT_S,
            spoke_env={
                "SPOKE_MAX_QUEUE_DEPTH": "100000000",
                # One client queues the bench's backlogs: its quota must not refuse them.
                "SPOKE_MAX_QUEUED_PER_PRINCIPAL": "100000000",
                # The per-principal rate limit still runs (its Redis script is part of every
                # request's cost) but never refuses: one client here drives thousands of ops/s.
                "SPOKE_RATE_PER_PRINCIPAL": str(_RATE),
            },
            hub_env={"HUB_RATE_PER_PRINCIPAL": str(_RATE), "HUB_RATE_BURST": str(_BURST)},
        )

    @property
    def files(self) -> FederationFiles:
        return self.federation.files

    @property
    def operator(self) -> keys.SigningKey:
        return self.federation.operator

    @property
    def trust(self) -> TrustStore:
        return self.federation.trust

    @property
    def hub_redis(self) -> EmbeddedRedis | None:
        return self.federation.redis.get(self.federation.hub_name)

    @property
    def redis_servers(self) -> list[EmbeddedRedis]:
        return list(self.federation.redis.values())

    async def start(self, fanout_ns: Iterable[int]) -> None:
        fed = self.federation
        await fed.prepare()
        for name in fed.spoke_names:
            self.sites[name] = Site(name, fed.redis[name], fed.address(name))
        self.sites[SCALE].concurrency = 1
        await asyncio.gather(*(self.start_spoke(n) for n in fed.spoke_names if n != SCALE))
        for n in fed.spoke_names:
            if n.startswith("spoke-"):
                await self.pause(n)
        starts = [self._start_hub("main", None)]
        for count in fanout_ns:
            starts.append(
                self._start_hub(f"fan-{count}", [spoke_name(i) for i in range(1, count + 1)])
            )
        env = testing.server_env({"PYTHONPATH": str(SCRIPTS_DIR)})
        self.echo = self._daemon("echo", [sys.executable, "-m", "benchlib.echo"], env)
        await asyncio.gather(*starts, self.echo.start())
        self.relay = self._daemon(
            "relay",
            [
                sys.executable,
                "-m",
                "benchlib.echo",
                "--forward",
                f"{testing.HOST}:{self.echo.port}",
            ],
            env,
        )
        await self.relay.start()
        self.floor_signed = self._floor_signed(env)
        await self.floor_signed.start()

    def _floor_signed(self, env: dict[str, str]) -> Daemon:
        """The design-floor server, as spoke-01 on spoke-01's Redis."""
        site = self.sites[spoke_name(1)]
        floor_env = {
            **env,
            "FLOOR_NAME": site.name,
            "FLOOR_KEY_FILE": str(self.files.keys_dir / f"{site.name}.key"),
            "FLOOR_TRUST_FILE": str(self.files.trust_file),
            "FLOOR_REDIS_URL": site.redis.url,
        }
        argv = [sys.executable, "-m", "benchlib.floor_signed"]
        return self._daemon("floor_signed", argv, floor_env)

    def _daemon(self, name: str, argv: list[str], env: dict[str, str]) -> Daemon:
        log = self.federation.logs / f"{name}.log"
        return Daemon(name, argv, log, env=env, ready_timeout_s=READY_TIMEOUT_S)

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

    async def start_spoke(self, name: str) -> None:
        """Start the site's spoked, or start it again after ``stop_spoke``."""
        site = self.sites[name]
        if site.daemon is not None:
            await site.daemon.start()
            return
        env = {"SPOKE_CONCURRENCY": str(site.concurrency)}
        # spoked --workers N for every site (spoke/workers.py); helpers' CPU is not counted.
        env["SPOKE_WORKERS"] = os.environ.get("BENCH_SPOKE_WORKERS", "1")
        site.daemon = await self.federation.start_spoked(name, env=env)

    async def stop_spoke(self, name: str) -> None:
        site = self.sites[name]
        if site.daemon is not None:
            await site.daemon.stop()

    async def _start_hub(self, key: str, spokes: list[str] | None) -> None:
        """A hubd named ``hub-<key>`` dialling ``spokes`` (every site when None)."""
        chosen = list(self.sites) if spokes is None else spokes
        daemon = await self.federation.start_hub(
            f"hub-{key}", spokes={n: self.sites[n].address for n in chosen}
        )
        self.hubs[key] = daemon
        self.hub_addresses[key] = daemon.address

    async def pause(self, name: str) -> None:
        """Pause a spoke's bullmq queue directly in its Redis: agents stay QUEUED."""
        async with self.sites[name].client() as r:
            await self.sites[name].bull_queue(r).pause()

    def direct(self, name: str) -> DirectClient:
        return DirectClient(self.sites[name].address, name, self.operator, self.trust)

    def hub(self, key: str = "main") -> hub_client.Client:
        return self.federation.client(20.0, hub=self.hub_addresses[key])

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
        for extra in (self.echo, self.relay, self.floor_signed):
            if extra is not None and extra.port:
                out[extra.name] = extra.pid
        return out

    async def stop(self) -> None:
        """Stop everything, daemons before their Redis; never raises for one failure."""
        extras = [d for d in (self.relay, self.echo, self.floor_signed) if d is not None]
        await asyncio.gather(*(d.stop() for d in extras), return_exceptions=True)
        await asyncio.gather(*(d.kill() for d in extras), return_exceptions=True)
        await self.federation.stop()
