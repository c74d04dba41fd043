"""One small federation per scenario: real redis-servers, hubd and spoked processes.

Layout under ``root``::

    redis/spoke/  redis/hub/    the spoke site's Redis (the one faults kill) and the hub's
    federation/                 keys and configs from ``write_federation``
    logs/*.log                  every daemon's stdout and stderr
    ledger.jsonl                what the agents wrote (tests/agents/ledger_agent.py)

The spoke's profiles run the ledger agent: ``once`` (not retry-safe, one attempt) and
``safe`` (retry-safe, three attempts). With ``via_proxy`` the hub dials the spoke through a
:class:`CuttableProxy` (``HUB_SPOKES`` points it there), which can cut or retarget the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hubspoke import client as hub_client
from hubspoke.hub.federation_files import FederationFiles, write_federation
from hubspoke.redis_server import EmbeddedRedis, pick_free_port

from .proxy import CuttableProxy

__all__ = ["LEDGER_AGENT", "Cluster", "Daemon", "DaemonError", "ProfileSpec"]

REPO = Path(__file__).resolve().parents[2]
LEDGER_AGENT = REPO / "tests" / "agents" / "ledger_agent.py"
HOST = "127.0.0.1"
SPOKE = "spoke-1"
_SERVING = re.compile(rb"^serving (\d+)$", re.MULTILINE)


class DaemonError(RuntimeError):
    """A daemon exited, or never printed its readiness line."""


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """A ledger-agent profile of the spoke."""

    name: str
    retry_safe: bool
    max_attempts: int = 1
    kill_grace_s: float = 2.0

    def toml(self, ledger: Path) -> str:
        argv = [sys.executable, str(LEDGER_AGENT)]
        return (
            f"\n[profiles.{self.name}]\n"
            f"argv = {json.dumps(argv)}\n"
            "task_on_stdin = false\n"
            f"retry_safe = {'true' if self.retry_safe else 'false'}\n"
            f"max_attempts = {self.max_attempts}\n"
            f"kill_grace_seconds = {self.kill_grace_s}\n"
            "timeout_seconds = 600\n"
            f"env = {{ LEDGER = {json.dumps(str(ledger))} }}\n"
        )


ONCE = ProfileSpec("once", retry_safe=False)
SAFE = ProfileSpec("safe", retry_safe=True, max_attempts=3)


class Daemon:
    """One spoked or hubd process, in its own session, logging to a file."""

    def __init__(
        self, name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(env)
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise DaemonError(f"{self.name} is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, timeout_s: float = 30.0) -> int:
        """Start it and wait for ``serving <port>`` in its log; return the port."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(timeout_s):
                self.port = await self._ready_port(self._proc, offset)
        except TimeoutError as exc:
            await self.kill()
            raise DaemonError(f"{self.name} not ready in {timeout_s:g} s") from exc
        except BaseException:
            await self.kill()
            raise
        return self.port

    async def _ready_port(self, proc: asyncio.subprocess.Process, offset: int) -> int:
        while True:
            if proc.returncode is not None:
                raise DaemonError(f"{self.name} exited: {self._tail(offset)}")
            with self.log_file.open("rb") as f:
                f.seek(offset)
                found = _SERVING.search(f.read())
            if found:
                return int(found.group(1))
            await asyncio.sleep(0.02)

    def signal(self, sig: signal.Signals) -> None:
        """Signal the daemon process itself (not its agents, which have their own groups)."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def kill(self) -> None:
        """SIGKILL, as a crash would, and reap it."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self.signal(signal.SIGCONT)  # a stopped process must still die promptly
        self.signal(signal.SIGKILL)
        await self._proc.wait()

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; idempotent."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await self._proc.wait()
        except TimeoutError:
            await self.kill()

    def _tail(self, offset: int) -> str:
        with contextlib.suppress(OSError), self.log_file.open("rb") as f:
            f.seek(offset)
            return " | ".join(f.read().decode(errors="replace").splitlines()[-8:])
        return "(no log)"


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


@dataclass
class Cluster:
    """A hub, one spoke site (its Redis and one or more spokeds) and the hub's Redis."""

    root: Path
    concurrency: int = 4
    profiles: Sequence[ProfileSpec] = (ONCE, SAFE)
    via_proxy: bool = False
    spoke: str = SPOKE
    spoke_redis: EmbeddedRedis = field(init=False)
    hub_redis: EmbeddedRedis = field(init=False)
    files: FederationFiles = field(init=False)
    hubd: Daemon = field(init=False)
    spokeds: list[Daemon] = field(default_factory=list)
    proxy: CuttableProxy | None = None
    spoke_address: str = ""
    hub_address: str = ""

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def retry_safe(self) -> dict[str, bool]:
        return {p.name: p.retry_safe for p in self.profiles}

    @property
    def spoked(self) -> Daemon:
        """The spoked the hub dials (the first one started)."""
        return self.spokeds[0]

    async def start(self, *, start_spoked: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.spoke_redis = EmbeddedRedis(self.root / "redis" / "spoke")
        self.hub_redis = EmbeddedRedis(self.root / "redis" / "hub")
        await asyncio.gather(self.spoke_redis.start(), self.hub_redis.start())
        self.spoke_address = f"{HOST}:{pick_free_port()}"
        self.hub_address = f"{HOST}:{pick_free_port()}"
        self.files = write_federation(
            self.root / "federation",
            [(self.spoke, self.spoke_address, self.spoke_redis.url)],
            self.hub_address,
            self.hub_redis.url,
            spoke_profiles="".join(p.toml(self.ledger) for p in self.profiles),
        )
        hub_env = dict(os.environ)
        if self.via_proxy:
            self.proxy = CuttableProxy(pick_free_port(), _split(self.spoke_address))
            await self.proxy.start()
            hub_env["HUB_SPOKES"] = f"{self.spoke}={self.proxy.address}"
        self.hubd = Daemon(
            "hubd",
            [*_python_module("hub"), "--config", str(self.files.hub_config)],
            self.root / "logs" / "hubd.log",
            hub_env,
        )
        if start_spoked:
            await self.add_spoked(self.spoke_address)
        await self.hubd.start()

    async def add_spoked(self, listen: str | None = None, concurrency: int | None = None) -> Daemon:
        """Start another spoked on the same Redis (``listen`` None: a free port)."""
        n = len(self.spokeds)
        env = {
            **os.environ,
            "SPOKE_CONCURRENCY": str(concurrency or self.concurrency),
            "SPOKE_LOG_LEVEL": "info",
        }
        address = listen or f"{HOST}:{pick_free_port()}"
        daemon = Daemon(
            f"spoked-{n}",
            [
                *_python_module("spoke"),
                "--config",
                str(self.files.spoke_configs[self.spoke]),
                "--listen",
                address,
            ],
            self.root / "logs" / f"spoked-{n}.log",
            env,
        )
        self.spokeds.append(daemon)
        await daemon.start()
        return daemon

    def client(self, timeout_s: float = 12.0) -> hub_client.Client:
        """A hub client signing as the operator; open it with ``async with``."""
        return hub_client.client_from_config(
            self.files.hubctl_config, hub=self.hub_address, timeout_s=timeout_s, env={}
        )

    async def stop(self) -> None:
        """Stop everything, daemons before Redis; never raises for one failure."""
        daemons = [self.hubd, *self.spokeds] if hasattr(self, "hubd") else list(self.spokeds)
        await asyncio.gather(*(d.stop() for d in daemons), return_exceptions=True)
        if self.proxy is not None:
            await self.proxy.close()
        servers = [getattr(self, "spoke_redis", None), getattr(self, "hub_redis", None)]
        await asyncio.gather(*(s.stop() for s in servers if s is not None), return_exceptions=True)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
