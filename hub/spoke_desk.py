"""What the hub answers about its spokes, signed by itself: the listing (ListSpokes) with
health, circuits, drains and outbox depth, and the record of a spoke it drains or undrains.

HubService admits and authorizes the command; this module builds and signs the answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import structlog

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.keys import SigningKey

from . import outbox_read
from .circuit import Circuit
from .drain import DrainStore
from .health import HealthMonitor, SpokeHealth
from .outbox_desk import OutboxDesk
from .registry import Probe, SpokeRegistry
from .relay import Inbound

__all__ = ["SpokeDesk", "health_pb", "spoke_pb"]

log = structlog.get_logger("hubspoke.hub.service")


class SpokeDesk:
    """The hub's own answers about its spokes (module docstring)."""

    def __init__(
        self,
        hub: str,
        key: SigningKey,
        probe_timeout_s: float,
        registry: SpokeRegistry,
        monitor: HealthMonitor | None,
        drains: DrainStore,
        outbox: OutboxDesk | None,
    ) -> None:
        """``monitor``: the background probe loop's records; without it, a listing probes
        every spoke itself."""
        self._hub = hub
        self._key = key
        self._probe_timeout_s = probe_timeout_s
        self._registry = registry
        self._monitor = monitor
        self._drains = drains
        self._outbox = outbox

    async def listing(self, inbound: Inbound) -> command_pb2.SignedEnvelope:
        """The signed page of every spoke and its health (ListSpokes)."""
        if self._monitor is None:
            probes = await self._registry.probe_all(self._probe_timeout_s)
            spokes = [spoke_pb(p) for p in probes]
        else:
            # The probe loop keeps these fresh: answer at once, never waiting on a spoke
            # (only right after start, until every spoke has been probed once).
            await self._monitor.first_round(self._probe_timeout_s + 1.0)
            spokes = [
                health_pb(r, self._registry, self._monitor.circuit(r.name))
                for r in self._monitor.records()
            ]
        await self._mark_drained(spokes)
        if self._outbox is not None:
            await outbox_read.annotate_spokes(self._outbox.outbox, spokes)
        return self._sign(inbound, spoke_page=command_pb2.SpokePage(spokes=spokes))

    async def set_drain(
        self, inbound: Inbound, spoke: str, draining: bool
    ) -> command_pb2.SignedEnvelope:
        """Drain or undrain ``spoke`` in the hub's Redis; answer its record, signed."""
        issuer = inbound.command.issuer
        await self._drains.set(spoke, draining, issuer)
        log.info("spoke_drain_set", spoke=spoke, draining=draining, by=issuer)
        record, circuit = SpokeHealth(spoke), Circuit.CLOSED
        if self._monitor is not None and self._monitor.get(spoke) is not None:
            self._monitor.drain(spoke, draining)
            record, circuit = self._monitor.get(spoke) or record, self._monitor.circuit(spoke)
        msg = health_pb(record, self._registry, circuit)
        msg.draining = draining
        return self._sign(inbound, spoke=msg)

    async def _mark_drained(self, spokes: Sequence[command_pb2.Spoke]) -> None:
        """Show the drains every hub on this Redis set (DRAINING while otherwise READY)."""
        try:
            drained = await self._drains.drained()
        except errors.BackendUnavailableError:
            log.warning("drained_spokes_unreadable")
            return
        for msg in spokes:
            msg.draining = msg.name in drained
            record = self._monitor.get(msg.name) if self._monitor is not None else None
            if self._monitor is not None and record is not None:
                self._monitor.drain(msg.name, msg.draining)
                record = self._monitor.get(msg.name) or record
                msg.health = int(record.state)  # type: ignore[assignment]  # wire numbers
            elif msg.draining and msg.health == command_pb2.Spoke.HEALTH_READY:
                msg.health = command_pb2.Spoke.HEALTH_DRAINING

    def _sign(
        self,
        inbound: Inbound,
        spoke_page: command_pb2.SpokePage | None = None,
        spoke: command_pb2.Spoke | None = None,
    ) -> command_pb2.SignedEnvelope:
        reply = command_pb2.Reply(
            command_id=inbound.command.command_id,
            responder=self._hub,
            request_digest=inbound.digest,
            issue_time=commands.to_timestamp(commands.now()),
            spoke_page=spoke_page,
            spoke=spoke,
        )
        return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self._key)


def spoke_pb(p: Probe) -> command_pb2.Spoke:
    health = command_pb2.Spoke.HEALTH_READY if p.ready else command_pb2.Spoke.HEALTH_UNREACHABLE
    if p.incompatible:
        health = command_pb2.Spoke.HEALTH_INCOMPATIBLE
    return command_pb2.Spoke(
        name=p.entry.name,
        address=p.entry.address,
        health=health,
        last_probe_time=commands.to_timestamp(p.at.astimezone(dt.UTC)),
        labels=dict(p.entry.labels),
        protocol_version=p.protocol,
    )


def health_pb(r: SpokeHealth, registry: SpokeRegistry, circuit: Circuit) -> command_pb2.Spoke:
    """A spoke's health record, as ListSpokes signs it."""
    entry = registry.entry(r.name)
    msg = command_pb2.Spoke(
        name=r.name,
        address=entry.address if entry else "",
        health=int(r.state),  # type: ignore[arg-type]  # SpokeState carries the wire numbers
        labels=dict(entry.labels) if entry else {},
        protocol_version=r.protocol,
        circuit=circuit.value,  # type: ignore[arg-type]  # Circuit carries the wire numbers
        health_detail=r.detail,
        missed_probes=r.missed,
    )
    msg.enrolled, msg.link_mode = registry.link_facts(r.name)  # hub/membership.py
    if r.last_probe is not None:
        msg.last_probe_time.CopyFrom(commands.to_timestamp(r.last_probe.astimezone(dt.UTC)))
    if r.last_seen is not None:
        msg.last_seen_time.CopyFrom(commands.to_timestamp(r.last_seen.astimezone(dt.UTC)))
    if r.status is not None:
        msg.status.CopyFrom(r.status)
    return msg
