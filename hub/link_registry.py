"""The registry that decides, per spoke entry, how the hub reaches it: dial or connect.

:class:`LinkingRegistry` is hub/registry.py's ``SpokeRegistry`` plus connect mode: for an
entry with ``link = "connect"`` (static config now; enrolled entries carry the same field),
``link(name)`` returns a link whose stub is a :class:`~hubspoke.hub.link_sessions.ConnectStub`
over the spoke's control session instead of a channel to dial, and ``probe_all`` probes
only dial-mode spokes (connect-mode spokes' health comes from their heartbeats).
:func:`connect_mode` builds the hub's side of connect mode for HubApp.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import grpc

from hubspoke import grpc as sgrpc
from hubspoke.trust import TrustStore

from .config import HubConfig, SpokeEntry
from .forward_hooks import LeaseKeeper
from .health import HealthMonitor
from .link_metrics import LinkMetrics
from .link_service import LinkServicer
from .link_sessions import ConnectStub, Exchanger, LinkConfig, LinkSession, LinkSessions
from .registry import Probe, SpokeLink, SpokeRegistry

if TYPE_CHECKING:
    from hubspoke.gen.federation.v1.spoke_service_pb2_grpc import SpokeServiceAsyncStub

__all__ = ["LinkingRegistry", "connect_mode", "link_config", "stop_serving"]


class LinkingRegistry(SpokeRegistry):
    """Spokes in dial mode (channels) and connect mode (sessions)."""

    def __init__(
        self,
        entries: Sequence[SpokeEntry],
        options: sgrpc.ServerOptions,
        credentials: grpc.ChannelCredentials | None = None,
        sessions: LinkSessions | None = None,
        **more: Any,
    ) -> None:
        super().__init__(entries, options, credentials, **more)
        self.sessions = sessions or LinkSessions(LinkConfig())
        self.forwarder: Exchanger | None = None
        """Set with several hubds: carries calls to spokes held by another (hub/forward_*)."""

    def connects(self, name: str) -> bool:
        """Whether ``name`` is a spoke this hub links in connect mode."""
        entry = self.entry(name)
        return entry is not None and entry.link == "connect"

    def link(self, name: str) -> SpokeLink:
        """The link to a configured spoke (KeyError if it is not configured): a connect-mode
        spoke's is carried over its session (and fails at once without one)."""
        entry = self.entry(name)
        if entry is None or entry.link != "connect":
            return super().link(name)
        stub = cast("SpokeServiceAsyncStub", ConnectStub(self.sessions, name, self.forwarder))
        # A connect link has no channel of its own: only probes use one, and connect-mode
        # spokes are not probed (their heartbeats say how they are).
        return SpokeLink(entry=entry, channel=cast(grpc.aio.Channel, None), stub=stub)

    async def probe_all(self, timeout_s: float) -> list[Probe]:
        """Probe every dial-mode spoke concurrently; results in config order."""
        names = [n for n in self.names() if not self.connects(n)]
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.probe(n, timeout_s)) for n in names]
        return [t.result() for t in tasks]

    async def close(self) -> None:
        self.sessions.close_all()
        await super().close()


async def stop_serving(
    built: sgrpc.BuiltServer, registry: SpokeRegistry | None, grace_s: float
) -> None:
    """Stop the hub's server: calls in flight may finish for ``grace_s``; connect-mode
    sessions end as soon as no call to their spokes is in flight (their control streams
    would otherwise hold the server for the whole grace)."""
    stopping = asyncio.create_task(built.stop(grace_s))
    if isinstance(registry, LinkingRegistry):
        await registry.sessions.idle(grace_s)
        registry.sessions.close_all()
    await stopping


def link_config(cfg: HubConfig) -> LinkConfig:
    """The ``link_*`` options of the hub's config."""
    return LinkConfig(
        hello_timeout_s=cfg.link_hello_timeout_s,
        max_pending_calls=cfg.link_max_pending_calls,
        call_buffer=cfg.link_call_buffer,
        missed_heartbeats=cfg.link_missed_heartbeats,
        min_heartbeat_s=cfg.link_min_heartbeat_s,
        max_heartbeat_s=cfg.link_max_heartbeat_s,
        max_skew=dt.timedelta(seconds=cfg.max_skew_s),
    )


def connect_mode(
    cfg: HubConfig,
    registry: LinkingRegistry,
    trust: TrustStore,
    monitor: HealthMonitor,
    metrics: LinkMetrics | None,
    leases: LeaseKeeper | None = None,
) -> LinkServicer:
    """The hub's SpokeLinkService over ``registry``'s sessions, feeding ``monitor``;
    ``leases``: the sessions' leases and hello nonces in Redis (hub/forward_hooks.py)."""
    sessions = registry.sessions
    for name in registry.names():
        if registry.connects(name):
            monitor.observe_link_closed(name, None, "not connected yet")

    def changed(spoke: str, session: LinkSession | None) -> None:
        if metrics is not None:
            count = len(sessions.names())
            if session is None:
                metrics.closed(count)
            else:
                metrics.opened(spoke, count)

    sessions.on_change = changed
    return LinkServicer(cfg.name, trust, sessions, monitor, registry.connects, metrics, leases)
