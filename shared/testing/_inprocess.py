"""A federation whose hub and spokes run in this process and on this event loop, built with
the production factories (``HubApp``, ``SpokeApp``) from the same generated configs.

For tests that reach into a server (its config, its registered methods) or that need the
servers on the test's own loop; anything that must be SIGKILLed or SIGSTOPped uses the
process :class:`~hubspoke.testing.Federation`. Create it inside the running loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig, SpokeEntry
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfig

from ._errors import HarnessError
from ._plan import FederationPlan

HubConfigure = Callable[[HubConfig], HubConfig]
SpokeConfigure = Callable[[SpokeConfig], SpokeConfig]

_BIND_ATTEMPTS: Final = 20
_BIND_RETRY_S: Final = 0.25
_STEP_TIMEOUT_S: Final = 60.0


def _same(config: Any) -> Any:
    return config


async def _start_binding(start: Callable[[], Awaitable[int]]) -> None:
    """Start a server; a port released a moment ago may take a moment to bind again."""
    for attempt in range(1, _BIND_ATTEMPTS + 1):
        try:
            await start()
        except OSError:
            if attempt == _BIND_ATTEMPTS:
                raise
            await asyncio.sleep(_BIND_RETRY_S)
        else:
            return


class InProcessFederation(FederationPlan):
    """A hub and spokes in this process, on the plan's Redis, files and addresses; used like
    :class:`~hubspoke.testing.Federation` (``start``, ``client``, ``stop``), with the apps
    themselves in :attr:`hub` and :attr:`spokes`."""

    def __init__(
        self,
        root: Path,
        spokes: Iterable[str] = ("spoke-1",),
        *,
        configure_hub: HubConfigure | None = None,
        configure_spoke: SpokeConfigure | None = None,
        spoke_grace_s: float | None = None,
        **plan: Any,
    ) -> None:
        """Describe it; :class:`FederationPlan` takes the other arguments.

        Args:
            configure_hub: changes the hub's config as loaded from its file.
            configure_spoke: changes each spoke's config as loaded from its file.
            spoke_grace_s: the grace of each spoke's shutdown (its config's when None).
        """
        super().__init__(root, list(spokes), **plan)
        self._configure_hub: HubConfigure = configure_hub or _same
        self._configure_spoke: SpokeConfigure = configure_spoke or _same
        self.spoke_grace_s = spoke_grace_s
        self.hub: HubApp | None = None
        self.spokes: dict[str, SpokeApp] = {}
        """Site → its running spoke app."""
        self.teardown_timeouts: list[str] = []
        """Steps of :meth:`stop` abandoned after a minute (evidence of a hang)."""

    async def start(self, *, spokes: bool | Iterable[str] = True, hub: bool = True) -> None:
        """Prepare (Redis, files), start the spokes, then the hub. On failure the caller
        still calls :meth:`stop`.

        Args:
            spokes: True for every site, False for none, or the sites to start.
            hub: whether to start the hub.
        """
        await self.prepare()
        for site in self.spoke_names if spokes is True else list(spokes or []):
            await self.start_spoke(site)
        if hub:
            await self.start_hub()

    def spoke_config(self, site: str) -> SpokeConfig:
        """The config a spoke of ``site`` starts with (file, then ``configure_spoke``)."""
        path = self.files.spoke_configs.get(site)
        if path is None:
            raise HarnessError(f"no spoke site {site!r} in this federation")
        return self._configure_spoke(SpokeConfig.load(path, {}))

    def hub_config(
        self, spokes: Mapping[str, str] | None = None, configure: HubConfigure | None = None
    ) -> HubConfig:
        """The config the hub starts with: its file, the spokes to dial if given, then
        ``configure`` (or the federation's ``configure_hub``)."""
        config = HubConfig.load(self.files.hub_config, {})
        if spokes is not None:
            config = config.replace(spokes=tuple(SpokeEntry(n, a) for n, a in spokes.items()))
        return (configure or self._configure_hub)(config)

    async def start_spoke(self, site: str) -> SpokeApp:
        """Start (or restart) the spoke of ``site`` at its address; retries a busy port."""
        await self.stop_spoke(site)
        app = SpokeApp(self.spoke_config(site))
        self.spokes[site] = app
        await _start_binding(app.start)
        return app

    async def start_hub(
        self,
        *,
        spokes: Mapping[str, str] | None = None,
        configure: HubConfigure | None = None,
    ) -> HubApp:
        """Start (or restart) the hub at its address; retries a busy port.

        Args:
            spokes: spoke name → the address to dial, instead of the file's list.
            configure: replaces the federation's ``configure_hub`` for this start.
        """
        await self.stop_hub()
        self.hub = HubApp(self.hub_config(spokes, configure))
        await _start_binding(self.hub.start)
        return self.hub

    async def restart_spoke(self, site: str) -> SpokeApp:
        """Stop the spoke of ``site`` and start a new one on the same address and Redis."""
        return await self.start_spoke(site)

    async def restart_hub(self) -> HubApp:
        """Stop the hub and start a new one with the same config on the same address."""
        if self.hub is None:
            return await self.start_hub()
        config = self.hub.config
        await self.stop_hub()
        self.hub = HubApp(config)
        await _start_binding(self.hub.start)
        return self.hub

    async def stop_spoke(self, site: str) -> None:
        app = self.spokes.pop(site, None)
        if app is not None:
            await app.shutdown(self.spoke_grace_s)

    async def stop_hub(self) -> None:
        hub, self.hub = self.hub, None
        if hub is not None:
            await hub.shutdown()

    async def stop(self) -> None:
        """Stop the hub, the spokes, then any private Redis; a step that hangs is abandoned
        after a minute and named in :attr:`teardown_timeouts`. Idempotent."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [("hub", self.stop_hub)]
        for site in list(self.spokes):
            steps.append((f"spoke:{site}", functools.partial(self.stop_spoke, site)))
        steps.append(("redis-server", self.stop_redis))
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=_STEP_TIMEOUT_S)
            except TimeoutError:
                self.teardown_timeouts.append(name)
