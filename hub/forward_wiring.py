"""Several hubds for connect-mode spokes, wired for HubApp (docs/protocol.md "Several hubds").

:func:`start` builds, once the hub's port is bound: the lease store in the hub's Redis
(hub/forward_lease.py), the :class:`~hubspoke.hub.forward_hooks.LeaseKeeper` the link service
calls, the :class:`~hubspoke.hub.forward_stub.Forwarder` the registry's connect stubs fall back
to, the HubForwardService handler (added to the hub's server) and the lease watcher task
(hub/forward_watch.py). The forward address other hubds dial is ``link_forward_address``, or
by default the listen address's host (this host's name for a wildcard) with the bound port.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from dataclasses import dataclass

import grpc
import redis.asyncio

from hubspoke import grpc as sgrpc
from hubspoke.keys import SigningKey

from .config import HubConfig
from .forward_hooks import LeaseKeeper
from .forward_lease import LeaseStore
from .forward_service import ForwardServicer
from .forward_stub import Forwarder
from .forward_watch import LeaseWatcher
from .health import HealthMonitor
from .link_registry import LinkingRegistry

__all__ = ["ForwardWiring", "forward_address", "start"]

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104  # compared, not bound


@dataclass(frozen=True, slots=True)
class ForwardWiring:
    """What :func:`start` built; :meth:`close` stops it."""

    keeper: LeaseKeeper
    forwarder: Forwarder
    servicer: ForwardServicer
    watcher: asyncio.Task[None]

    async def close(self) -> None:
        self.watcher.cancel()
        await asyncio.gather(self.watcher, return_exceptions=True)
        await self.forwarder.close()


def forward_address(cfg: HubConfig, port: int) -> str:
    """Where other hubds reach this one (module docstring)."""
    if cfg.link_forward_address:
        return cfg.link_forward_address
    host = cfg.listen.rpartition(":")[0]
    if host in _WILDCARDS:
        host = socket.gethostname()
    return f"{host}:{port}"


def start(
    cfg: HubConfig,
    key: SigningKey,
    client: redis.asyncio.Redis,
    registry: LinkingRegistry,
    monitor: HealthMonitor,
    port: int,
    options: sgrpc.ServerOptions,
    credentials: grpc.ChannelCredentials | None,
) -> ForwardWiring:
    """Build the pieces; the caller adds ``servicer.handler()`` and passes ``keeper`` on."""
    own = forward_address(cfg, port)
    leases = LeaseStore(client, cfg.name, cfg.link_lease_ttl_s)
    skew = dt.timedelta(seconds=cfg.max_skew_s)
    keeper = LeaseKeeper(leases, own, cfg.link_missed_heartbeats, 2 * skew.total_seconds())
    forwarder = Forwarder(
        cfg.name, key, leases, own, options, credentials, cfg.link_forward_timeout_s
    )
    registry.forwarder = forwarder
    servicer = ForwardServicer(cfg.name, key, registry.sessions, skew)
    watch = LeaseWatcher(registry, monitor, leases, own, cfg.link_lease_poll_s)
    watcher = asyncio.create_task(watch.run(), name="lease-watch")
    return ForwardWiring(keeper, forwarder, servicer, watcher)
