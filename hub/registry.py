"""The spokes a hub knows: one reused channel per spoke, and health probes.

Channels are opened lazily, inside the running event loop (PITFALLS: grpc.aio objects),
and all closed by :meth:`SpokeRegistry.close`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import grpc as sgrpc
from hubspoke import version
from hubspoke.gen.federation.v1 import spoke_service_pb2_grpc

from .config import SpokeEntry

if TYPE_CHECKING:
    from hubspoke.gen.federation.v1.spoke_service_pb2_grpc import SpokeServiceAsyncStub

    from .membership import Membership

__all__ = ["STATUS_KEY", "STATUS_NONCE_KEY", "Probe", "SpokeLink", "SpokeRegistry"]

log = structlog.get_logger("hubspoke.hub.registry")

STATUS_NONCE_KEY: Final = "hubspoke-status-nonce-bin"
"""Sent with a probe: the nonce the spoke's signed status must be bound to (spoke/health.py)."""
STATUS_KEY: Final = "hubspoke-status-bin"
"""The spoke's signed status in the probe's initial metadata."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One spoke's health as a probe saw it."""

    entry: SpokeEntry
    ready: bool
    at: dt.datetime
    protocol: int = 0
    """The protocol version the spoke announced (1 if it announced none); 0: no answer."""
    incompatible: bool = False
    """It answered, but speaks another major protocol version: calls to it fail."""
    answered: bool = False
    """It answered the health check at all (SERVING or NOT_SERVING)."""
    nonce: bytes = b""
    """The nonce the probe sent for the spoke's signed status."""
    status: bytes = b""
    """The spoke's signed status (a serialized SignedEnvelope), if it sent one; unverified."""


@dataclass(frozen=True, slots=True)
class SpokeLink:
    """An open channel to one spoke and the stub over it."""

    entry: SpokeEntry
    channel: grpc.aio.Channel
    stub: SpokeServiceAsyncStub

    @property
    def name(self) -> str:
        return self.entry.name


class SpokeRegistry:
    """Static spokes from config, with lazily opened, reused channels."""

    def __init__(
        self,
        entries: Sequence[SpokeEntry],
        options: sgrpc.ServerOptions,
        credentials: grpc.ChannelCredentials | None = None,
        membership: Membership | None = None,
    ) -> None:
        """``credentials``: dial every spoke over TLS, checking its certificate carries
        ``tls_server_name`` or, by default, the spoke's name. ``membership``: enrolled
        spokes (hub/membership.py), served after the static ones."""
        self._membership = membership
        self._static: Mapping[str, SpokeEntry] = {e.name: e for e in entries}
        self._options = options
        self._credentials = credentials
        self._links: dict[str, SpokeLink] = {}
        self._retired: list[SpokeLink] = []
        self._closed = False

    @property
    def _entries(self) -> Mapping[str, SpokeEntry]:
        """Static spokes in config order, then enrolled ones by name."""
        if self._membership is None:
            return self._static
        enrolled = self._membership.entries()
        if not enrolled:
            return self._static
        return {**self._static, **{n: e for n, e in enrolled.items() if n not in self._static}}

    def static_names(self) -> list[str]:
        """The spokes from the hub's config, in config order."""
        return list(self._static)

    def link_facts(self, name: str) -> tuple[bool, str]:
        """Whether ``name`` joined by enrolment, and how the hub reaches it (dial, connect)."""
        entry = self._entries.get(name)
        link = str(getattr(entry, "link", "dial")) if entry is not None else ""
        enrolled = name not in self._static and self._membership is not None
        member = self._membership.member(name) if enrolled and self._membership else None
        if member is not None:
            return True, member.mode or link or "dial"
        return False, link

    def use_membership(self, membership: Membership) -> None:
        """Serve the enrolled spokes of ``membership`` too (hub/membership.py)."""
        self._membership = membership

    @property
    def revision(self) -> int | None:
        """The membership revision of the copy held (None: no membership)."""
        return self._membership.revision if self._membership is not None else None

    @property
    def enrolled(self) -> bool:
        """Whether it serves enrolled spokes (checking the membership revision)."""
        return self._membership is not None

    async def fresh(self, revision: int | None = None) -> None:
        """Re-read the membership if it changed (one Redis GET otherwise). ``revision``:
        the revision as read just now (hub/prefetch.py): no GET unless it moved."""
        if self._membership is not None and revision != self._membership.revision:
            await self._membership.fresh()  # None (not read yet) is never a revision

    def names(self) -> list[str]:
        """Spoke names in config order, then enrolled spokes by name."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> SpokeEntry | None:
        return self._entries.get(name)

    def link(self, name: str) -> SpokeLink:
        """The open link to a configured spoke (KeyError if it is not configured)."""
        entry = self._entries[name]
        found = self._links.get(name)
        if found is not None and found.entry == entry:
            return found
        if found is not None:  # re-enrolled elsewhere: closed with the rest at close()
            self._retired.append(found)
        if self._closed:
            raise RuntimeError("spoke registry is closed")
        channel = sgrpc.open_channel(
            entry.address,
            self._options,
            self._credentials,
            server_name=entry.tls_server_name or entry.name,
        )
        stub: SpokeServiceAsyncStub = spoke_service_pb2_grpc.SpokeServiceStub(channel)
        made = SpokeLink(entry=entry, channel=channel, stub=stub)
        self._links[name] = made
        return made

    async def probe(self, name: str, timeout_s: float) -> Probe:
        """Ask one spoke's grpc.health.v1 service whether it is SERVING.

        The probe is the protocol handshake (``hubspoke.version``): it announces ours, and
        reads the spoke's from the answer's initial metadata. A spoke that refuses ours
        (FAILED_PRECONDITION) or announces another major is ``incompatible``, not ready.
        """
        target = self.link(name)
        health = health_pb2_grpc.HealthStub(target.channel)
        ready = incompatible = answered = False
        protocol = 0
        nonce = secrets.token_bytes(24)
        status = b""
        try:
            call = health.Check(
                health_pb2.HealthCheckRequest(service=""),
                timeout=timeout_s,
                metadata=(*version.CALL_METADATA, (STATUS_NONCE_KEY, nonce)),
            )
            resp = await call
            initial = await call.initial_metadata()
            announced = version.peer_protocol(initial)
            protocol = version.announced_major(announced) or -1
            incompatible = protocol != version.PROTOCOL_VERSION
            answered = True
            ready = resp.status == health_pb2.HealthCheckResponse.SERVING and not incompatible
            status = next(
                (v for k, v in initial or () if k == STATUS_KEY and isinstance(v, bytes)), b""
            )
        except grpc.aio.AioRpcError as exc:
            incompatible = exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            if not incompatible:
                log.info("spoke_probe_failed", spoke=name, code=exc.code().name)
            else:
                protocol = -1
                log.warning("spoke_protocol_mismatch", spoke=name, detail=exc.details())
        if incompatible and protocol > 0:
            log.warning(
                "spoke_protocol_mismatch",
                spoke=name,
                spoke_protocol=protocol,
                hub_protocol=version.PROTOCOL_VERSION,
            )
        return Probe(
            target.entry,
            ready,
            dt.datetime.now(dt.UTC),
            max(protocol, 0),
            incompatible,
            answered=answered or incompatible,
            nonce=nonce,
            status=status,
        )

    async def probe_all(self, timeout_s: float) -> list[Probe]:
        """Probe every spoke concurrently; results in config order."""
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.probe(n, timeout_s)) for n in self._entries]
        return [t.result() for t in tasks]

    async def close(self) -> None:
        """Close every channel; idempotent."""
        self._closed = True
        links, self._links = [*self._links.values(), *self._retired], {}
        self._retired = []
        for link in links:
            await link.channel.close(None)
