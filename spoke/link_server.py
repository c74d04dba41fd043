"""Connect mode in SpokeApp: what stands where the gRPC server would (no listening socket).

:func:`server_factory` gives SpokeApp the function that builds its "server": in dial mode
``hubspoke.grpc.build_server``; in connect mode one that builds a :class:`LinkedServer`,
which has the surface SpokeApp uses (``server.start()``, ``serving()``, ``health`` with its
``status_source``, ``port`` 0, ``stop()``) and, once started, keeps the spoke's
:class:`~hubspoke.spoke.link.HubLink` to its hub open. Heartbeats carry what
``health.status_source`` signs (spoke/health.py), as a dial-mode probe does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc
from grpc_health.v1 import _async as health_aio

from hubspoke import keys
from hubspoke import tls as stls
from hubspoke.grpc import BuiltServer, ServerOptions, Service, build_server

from .config import SpokeConfig, SpokeConfigError
from .link import HubLink, HubLinkConfig, RpcObserver, hub_addresses

__all__ = ["LinkedServer", "server_factory"]

Factory = Callable[..., BuiltServer]


class _Runner:
    """Starts and stops the link task, as ``grpc.aio.Server`` starts and stops serving."""

    def __init__(self, link: HubLink) -> None:
        self.link = link
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.link.run(), name="hub-link")

    async def stop(self, grace: float | None) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=grace)


class LinkedServer(BuiltServer):
    """A connect-mode spoke's stand-in for its gRPC server."""

    @property
    def link(self) -> HubLink:
        return cast(_Runner, self.server).link


def link_config(cfg: SpokeConfig) -> HubLinkConfig:
    """The connect-mode options of a spoke's config."""
    return HubLinkConfig(
        spoke=cfg.name,
        hub_address=cfg.hub_address,
        hub_name=cfg.hub_name,
        tls_server_name=cfg.hub_tls_server_name,
        heartbeat_interval_s=cfg.heartbeat_interval_s,
        reconnect_min_s=cfg.link_reconnect_min_s,
        reconnect_max_s=cfg.link_reconnect_max_s,
        max_message_bytes=cfg.max_message_bytes,
    )


def _credentials(cfg: SpokeConfig) -> grpc.ChannelCredentials | None:
    try:
        if cfg.tls is None:
            for address in hub_addresses(cfg.hub_address):
                stls.require_loopback("hub_address", address)
            return None
        return stls.channel_credentials(cfg.tls)
    except stls.TlsError as exc:
        raise SpokeConfigError(str(exc)) from exc


def server_factory(cfg: SpokeConfig) -> Factory:
    """``build_server`` in dial mode; in connect mode, a builder of a :class:`LinkedServer`
    (same arguments; the address and server credentials are not used)."""
    if cfg.link != "connect":
        return build_server
    credentials = _credentials(cfg)
    key = keys.load_private(cfg.key_file, cfg.name)

    def build(
        services: Sequence[Service],
        address: str,
        options: ServerOptions,
        server_credentials: Any = None,
        observe: RpcObserver | None = None,
    ) -> BuiltServer:
        health = health_aio.HealthServicer()
        health.status_source = None

        def status(nonce: bytes) -> bytes | None:
            source = health.status_source
            signed: bytes | None = source(nonce) if source is not None else None
            return signed

        link = HubLink(
            link_config(cfg), key, status, services[0].servicer, credentials, observe=observe
        )
        return LinkedServer(
            server=cast(grpc.aio.Server, _Runner(link)), health=health, port=0, methods=[]
        )

    return build
