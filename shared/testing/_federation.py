"""A federation of real processes: a private Redis per peer, ``spoked`` per spoke site (or
several sharing the site's Redis), and one or more ``hubd``.

Used by ``hubctl dev up``, bench and chaos, wherever a test needs processes it can SIGKILL
or SIGSTOP. Each daemon runs ``--config`` with the generated file, in its own session,
with the servers' own environment variables removed (``extra_env`` adds some back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from ._daemon import Daemon, server_argv, server_env
from ._errors import HarnessError
from ._net import address, pick_free_port
from ._plan import FederationPlan


async def together(starts: Iterable[Coroutine[Any, Any, object]]) -> None:
    """Run the starts concurrently; the first harness failure is raised as itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            for start in starts:
                tg.create_task(start)
    except* HarnessError as group:
        raise group.exceptions[0] from None


class Federation(FederationPlan):
    """Redis servers, spokeds and hubds started together and stopped together.

    Example::

        fed = Federation(tmp_path, ["spoke-1", "spoke-2"])
        try:
            await fed.start()
            async with fed.client() as client:
                ...
        finally:
            await fed.stop()
    """

    def __init__(
        self,
        root: Path,
        spokes: Iterable[str] = ("spoke-1",),
        *,
        ready_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
        spoke_env: Mapping[str, str] | None = None,
        hub_env: Mapping[str, str] | None = None,
        **plan: Any,
    ) -> None:
        """Describe it; :class:`FederationPlan` takes the other arguments.

        Args:
            ready_timeout_s: how long each daemon may take to print ``serving <port>``.
            stop_grace_s: SIGTERM to SIGKILL, per daemon.
            spoke_env: variables for every spoked (e.g. ``SPOKE_CONCURRENCY``). Unless it
                says otherwise, ``SPOKE_LEAVE_AGENTS_ON_SHUTDOWN=false``: stopping a spoked
                (SIGTERM) ends its agents, so none outlives the test.
            hub_env: variables for every hubd.
        """
        super().__init__(root, list(spokes), **plan)
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.spoke_env = {"SPOKE_LEAVE_AGENTS_ON_SHUTDOWN": "false", **(spoke_env or {})}
        self.hub_env = dict(hub_env or {})
        self.hubs: dict[str, Daemon] = {}
        """Every hubd by name, in start order (the first is :attr:`hub`)."""
        self.spokeds: dict[str, list[Daemon]] = {}
        """Site → its spokeds, in start order (the first listens at the site's address)."""

    @property
    def logs(self) -> Path:
        """Where every daemon's log goes."""
        return self.root / "logs"

    @property
    def hub(self) -> Daemon:
        """The first hubd."""
        if not self.hubs:
            raise HarnessError("no hubd started")
        return next(iter(self.hubs.values()))

    def spoked(self, site: str | None = None) -> Daemon:
        """The first spoked of ``site`` (the first site when None)."""
        found = self.spokeds.get(site or self.spoke_names[0])
        if not found:
            raise HarnessError(f"no spoked started for {site or self.spoke_names[0]!r}")
        return found[0]

    @property
    def daemons(self) -> list[Daemon]:
        """Every daemon started so far: spokeds, then hubds."""
        return [*(d for ds in self.spokeds.values() for d in ds), *self.hubs.values()]

    async def start(self, *, spokeds: bool | Iterable[str] = True, hub: bool = True) -> None:
        """Prepare (Redis, files), start a spoked per site, then the hub; each start waits
        for ``serving <port>``. On failure the caller still calls :meth:`stop`.

        Args:
            spokeds: True for every site, False for none, or the sites to start.
            hub: whether to start the hub (dialling every site at its address).

        Raises:
            HarnessError: a redis-server or a daemon did not start.
        """
        await self.prepare()
        sites = self.spoke_names if spokeds is True else list(spokeds or [])
        if hub:
            self.report(f"starting hubd and {len(sites)} spoked (logs in {self.logs})")
        await together(self.start_spoked(site) for site in sites)
        if hub:
            await self.start_hub()

    async def start_spoked(
        self, site: str, *, listen: str | None = None, env: Mapping[str, str] | None = None
    ) -> Daemon:
        """Start a spoked for ``site`` on the site's Redis and config.

        Args:
            site: the spoke site.
            listen: its address; the site's own for the first spoked, else a free port.
            env: variables for this spoked over ``spoke_env``.
        """
        running = self.spokeds.setdefault(site, [])
        configured = self.address(site)
        listen = listen or (configured if not running else address(pick_free_port()))
        name = site if not running else f"{site}.{len(running) + 1}"
        argv = [*server_argv("spoked", "hubspoke.spoke"), "--config", str(self.config_of(site))]
        if listen != configured:
            argv += ["--listen", listen]
        daemon = self._daemon(name, argv, listen, {**self.spoke_env, **(env or {})})
        running.append(daemon)
        await daemon.start()
        return daemon

    async def start_hub(
        self,
        name: str | None = None,
        *,
        spokes: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        listen: str | None = None,
    ) -> Daemon:
        """Start a hubd with the hub's identity, Redis and config.

        Args:
            name: its name (logs, :attr:`hubs`); the first hub is the hub's peer name and
                listens at :attr:`hub_address`, others pick free ports.
            spokes: spoke name → the address to dial (``HUB_SPOKES``), instead of every
                site at its own address: a subset, or a proxy in between.
            env: variables for this hubd over ``hub_env``.
            listen: its address, when it must be known before (a connect-mode spoke's list
                of hubds); by default as above.
        """
        name = name or self.hub_name
        if name in self.hubs:
            raise HarnessError(f"hubd {name!r} is already started")
        listen = listen or (self.hub_address if not self.hubs else address(pick_free_port()))
        argv = [*server_argv("hubd", "hubspoke.hub"), "--config", str(self.files.hub_config)]
        if listen != self.hub_address:
            argv += ["--listen", listen]
        extra = {**self.hub_env, **(env or {})}
        if spokes is not None:
            extra["HUB_SPOKES"] = ",".join(f"{n}={a}" for n, a in spokes.items())
        self.hubs[name] = daemon = self._daemon(name, argv, listen, extra)
        await daemon.start()
        return daemon

    def config_of(self, site: str) -> Path:
        """The spoked config file of a site."""
        found = self.files.spoke_configs.get(site)
        if found is None:
            raise HarnessError(f"no spoke site {site!r} in this federation")
        return found

    def _daemon(self, name: str, argv: list[str], listen: str, env: Mapping[str, str]) -> Daemon:
        return Daemon(
            name,
            argv,
            self.logs / f"{name}.log",
            address=listen,
            env=server_env(env),
            cwd=self.root,
            ready_timeout_s=self.ready_timeout_s,
            stop_grace_s=self.stop_grace_s,
            report=self.report,
        )

    def dead(self) -> str | None:
        """Why the federation is broken (a daemon or a Redis exited), or None."""
        for d in self.daemons:
            if d.returncode is not None:
                return f"{d.name} exited unexpectedly with status {d.returncode}; see {d.log_file}"
        for name, r in self.redis.items():
            if not r.running:
                return f"the redis-server of {name} exited unexpectedly; see {r.log_file}"
        return None

    def pids(self) -> dict[str, int]:
        """Every running process by role: ``hub:<name>``, ``spoke:<name>``, ``redis:<peer>``."""
        out = {f"spoke:{d.name}": d.pid for ds in self.spokeds.values() for d in ds if d.running}
        out |= {f"hub:{n}": d.pid for n, d in self.hubs.items() if d.running}
        out |= {f"redis:{n}": r.pid for n, r in self.redis.items() if r.pid is not None}
        return out

    async def stop_spokeds(self, site: str) -> None:
        """Stop every spoked of ``site`` (they can be started again)."""
        await asyncio.gather(*(d.stop() for d in self.spokeds.get(site, [])))

    async def stop(self) -> None:
        """Stop every daemon (all at once), then every Redis; idempotent, and never raises
        for one failure: whatever ignores SIGTERM past the grace is SIGKILLed."""
        daemons = self.daemons
        await asyncio.gather(*(d.stop() for d in daemons), return_exceptions=True)
        await asyncio.gather(*(d.kill() for d in daemons), return_exceptions=True)
        await self.stop_redis(self.stop_grace_s)
