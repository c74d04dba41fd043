"""One small federation per scenario, from the harness (:class:`hubspoke.testing.Federation`):
real redis-servers, hubd and spoked processes.

Layout under ``root`` (the harness's)::

    keys/ trust.toml policy.toml hub.toml spoke-1.toml hubctl.toml   keys and configs
    redis/spoke-1/  redis/hub/   the spoke site's Redis (the one faults kill) and the hub's
    logs/*.log                   every daemon's stdout and stderr
    ledger.jsonl                 what the agents wrote (tests/agents/ledger_agent.py)

The spoke's profiles run the ledger agent: ``once`` (not retry-safe, one attempt) and
``safe`` (retry-safe, three attempts). With ``via_proxy`` the hub dials the spoke through a
:class:`CuttableProxy` (``HUB_SPOKES`` points it there), which can cut or retarget the link.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hubspoke import client as hub_client
from hubspoke import testing
from hubspoke.hub.federation_files import FederationFiles
from hubspoke.testing import Daemon, DaemonError, EmbeddedRedis

from .proxy import CuttableProxy

__all__ = ["LEDGER_AGENT", "Cluster", "Daemon", "DaemonError", "ProfileSpec"]

REPO = Path(__file__).resolve().parents[2]
LEDGER_AGENT = REPO / "tests" / "agents" / "ledger_agent.py"
SPOKE = "spoke-1"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0


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


@dataclass
class Cluster:
    """A hub, one spoke site (its Redis and one or more spokeds) and the hub's Redis."""

    root: Path
    concurrency: int = 4
    profiles: Sequence[ProfileSpec] = (ONCE, SAFE)
    via_proxy: bool = False
    spoke: str = SPOKE
    proxy: CuttableProxy | None = None
    hub_env: dict[str, str] = field(default_factory=dict)
    """Variables for every hubd (e.g. a shorter circuit_open_s)."""
    federation: testing.Federation = field(init=False)

    def __post_init__(self) -> None:
        self.federation = testing.Federation(
            self.root,
            [self.spoke],
            spoke_profiles="".join(p.toml(self.ledger) for p in self.profiles),
            ready_timeout_s=READY_TIMEOUT_S,
            stop_grace_s=STOP_GRACE_S,
            spoke_env={"SPOKE_LOG_LEVEL": "info"},
            hub_env=self.hub_env,
        )

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def retry_safe(self) -> dict[str, bool]:
        return {p.name: p.retry_safe for p in self.profiles}

    @property
    def files(self) -> FederationFiles:
        return self.federation.files

    @property
    def spoke_address(self) -> str:
        return self.federation.address(self.spoke)

    @property
    def hub_address(self) -> str:
        return self.federation.hub_address

    @property
    def spoke_redis(self) -> EmbeddedRedis:
        """The spoke site's redis-server (the one the Redis fault kills)."""
        return self.federation.redis[self.spoke]

    @property
    def hubd(self) -> Daemon:
        return self.federation.hub

    @property
    def spokeds(self) -> list[Daemon]:
        return self.federation.spokeds.get(self.spoke, [])

    @property
    def spoked(self) -> Daemon:
        """The spoked the hub dials (the first one started)."""
        return self.federation.spoked(self.spoke)

    async def start(self, *, start_spoked: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        await self.federation.prepare()
        if start_spoked:
            await self.add_spoked(self.spoke_address)
        spokes = None
        if self.via_proxy:
            host, _, port = self.spoke_address.rpartition(":")
            self.proxy = CuttableProxy(testing.pick_free_port(), (host, int(port)))
            await self.proxy.start()
            spokes = {self.spoke: self.proxy.address}
        await self.federation.start_hub(spokes=spokes)

    async def add_spoked(self, listen: str | None = None, concurrency: int | None = None) -> Daemon:
        """Start another spoked on the same Redis (``listen`` None: a free port)."""
        env = {"SPOKE_CONCURRENCY": str(concurrency or self.concurrency)}
        if listen is None:
            listen = f"{testing.HOST}:{testing.pick_free_port()}"
        return await self.federation.start_spoked(self.spoke, listen=listen, env=env)

    def client(self, timeout_s: float = 12.0) -> hub_client.Client:
        """A hub client signing as the operator; open it with ``async with``."""
        return self.federation.client(timeout_s)

    async def stop(self) -> None:
        """Stop everything, daemons before Redis; never raises for one failure."""
        await self.federation.stop()
        if self.proxy is not None:
            await self.proxy.close()
