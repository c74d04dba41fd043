"""What the hub knows about each spoke's health, kept fresh by a probe loop.

:class:`HealthMonitor` probes every dial-mode spoke each ``probe_interval_s``
(``SpokeRegistry.probe``: grpc.health plus the spoke's signed status) and keeps one
:class:`SpokeHealth` record per spoke, derived as follows:

* READY: it answered, speaks our protocol, its Redis answers, its queue is neither full nor
  paused;
* DEGRADED: it answered, but its Redis is down, its queue is full or paused, or its health
  says NOT_SERVING (``detail`` says which);
* DRAINING: an operator drains it (no new placements; set by :meth:`HealthMonitor.drain`,
  which the drain verb will call);
* UNREACHABLE: it missed its last probe (fewer than ``missed_probes_down`` in a row);
* DISCONNECTED: it missed ``missed_probes_down`` probes in a row;
* INCOMPATIBLE: it speaks another major protocol version.

Each probe also feeds the spoke's circuit breaker (hub/circuit.py): a probe that got an
answer is a success (and closes a half-open circuit), one that did not is a failure.

The status is the spoke's own signed Reply (spoke/health.py), verified here: signed by that
spoke, bound to the probe's nonce. A connect-mode spoke is not probed: each heartbeat on its
control stream carries the same signed Reply, bound to the session's nonce, and feeds
:meth:`HealthMonitor.observe_heartbeat` (READY or DEGRADED as above, ``last_seen`` its time);
when its session ends (the spoke left, or missed ``link_missed_heartbeats`` heartbeats)
:meth:`HealthMonitor.observe_link_closed` makes it DISCONNECTED (hub/link_service.py).

The records live in this hubd's memory; issue 11 moves them into Redis so several hubds share
them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

import structlog

from hubspoke import commands, envelope, errors, version
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustStore

from .circuit import Circuit, Circuits
from .metrics import HubMetrics
from .registry import Probe, SpokeRegistry

__all__ = ["HealthConfig", "HealthMonitor", "SpokeHealth", "SpokeState"]

log = structlog.get_logger("hubspoke.hub.health")


class SpokeState(enum.IntEnum):
    """A spoke's health as the hub derives it (the values are ``Spoke.Health`` numbers)."""

    UNKNOWN = command_pb2.Spoke.HEALTH_UNSPECIFIED
    READY = command_pb2.Spoke.HEALTH_READY
    UNREACHABLE = command_pb2.Spoke.HEALTH_UNREACHABLE
    INCOMPATIBLE = command_pb2.Spoke.HEALTH_INCOMPATIBLE
    DEGRADED = command_pb2.Spoke.HEALTH_DEGRADED
    DRAINING = command_pb2.Spoke.HEALTH_DRAINING
    DISCONNECTED = command_pb2.Spoke.HEALTH_DISCONNECTED


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """How often spokes are probed, and when a silent one counts as gone."""

    probe_interval_s: float = 5.0
    probe_timeout_s: float = 1.0
    missed_probes_down: int = 2


@dataclass(frozen=True, slots=True)
class SpokeHealth:
    """One spoke's health record (a probe or, later, a heartbeat updates it)."""

    name: str
    state: SpokeState = SpokeState.UNKNOWN
    detail: str = ""
    """Why it is not READY, in words."""
    last_probe: dt.datetime | None = None
    """When the hub last probed it (or last heard a heartbeat)."""
    last_seen: dt.datetime | None = None
    """When it last answered well."""
    missed: int = 0
    """Probes in a row it did not answer."""
    protocol: int = 0
    status: command_pb2.SpokeStatus | None = None
    """Its last verified status (counts, slots, Redis health)."""
    draining: bool = False
    """An operator drains it."""

    @property
    def answering(self) -> bool:
        return self.state not in (
            SpokeState.UNKNOWN,
            SpokeState.UNREACHABLE,
            SpokeState.DISCONNECTED,
        )


class HealthMonitor:
    """Probes every spoke in the background and keeps their health records."""

    def __init__(
        self,
        registry: SpokeRegistry,
        trust: TrustStore,
        circuits: Circuits,
        cfg: HealthConfig,
        metrics: HubMetrics | None = None,
    ) -> None:
        self._registry = registry
        self._trust = trust
        self._circuits = circuits
        self._cfg = cfg
        self._metrics = metrics
        self._records = {n: SpokeHealth(n) for n in registry.names()}
        self._first_round = asyncio.Event()
        for name, _ in circuits.items():
            self._publish_circuit(name)

    @property
    def config(self) -> HealthConfig:
        return self._cfg

    def get(self, name: str) -> SpokeHealth | None:
        return self._records.get(name)

    def records(self) -> list[SpokeHealth]:
        """Every spoke's record, in config order."""
        # Enrolled spokes join and leave at run time: one not probed yet has a fresh record.
        return [self._records.get(n) or SpokeHealth(n) for n in self._registry.names()]

    def circuit(self, name: str) -> Circuit:
        breaker = self._circuits.get(name)
        return breaker.state if breaker else Circuit.CLOSED

    async def first_round(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every spoke has been probed once."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._first_round.wait()
        except TimeoutError:
            pass

    async def run(self) -> None:
        """Probe every spoke each interval until cancelled."""
        while True:
            try:
                await self.probe_round()
            except Exception:  # the loop must outlive any one bad round
                log.exception("probe_round_failed")
            await asyncio.sleep(self._cfg.probe_interval_s)

    async def probe_round(self) -> list[SpokeHealth]:
        """Probe every spoke once, concurrently; update and return their records."""
        probes = await self._registry.probe_all(self._cfg.probe_timeout_s)
        for probe in probes:
            self.observe_probe(probe)
        self._first_round.set()
        return self.records()

    def drain(self, name: str, draining: bool) -> None:
        """Mark a spoke drained by an operator (DRAINING while it answers), or not."""
        record = self._records.get(name) or SpokeHealth(name)
        self._set(replace(record, draining=draining, state=_state_of(record, draining)))

    def observe_probe(self, probe: Probe) -> SpokeHealth:
        name = probe.entry.name
        prev = self._records.get(name, SpokeHealth(name))
        breaker = self._circuits.get(name)
        if not probe.answered:
            missed = prev.missed + 1
            state = (
                SpokeState.DISCONNECTED
                if missed >= self._cfg.missed_probes_down
                else SpokeState.UNREACHABLE
            )
            record = replace(
                prev, state=state, detail="not answering", last_probe=probe.at, missed=missed
            )
            if breaker is not None and breaker.failure():
                log.warning("spoke_circuit_opened", spoke=name, failures=breaker.failures)
        else:
            if breaker is not None and breaker.success():
                log.info("spoke_circuit_closed", spoke=name)
            record = self._answered(prev, probe)
        self._publish_circuit(name)
        return self._set(record)

    def observe_status(
        self,
        name: str,
        signed: command_pb2.SignedEnvelope,
        nonce: bytes,
        at: dt.datetime,
    ) -> command_pb2.SpokeStatus:
        """Verify a spoke's signed status (a probe's, or later a heartbeat's).

        Raises:
            hubspoke.errors.CommandError: it is not signed by ``name``, or not bound to
                ``nonce``, or carries no status.
        """
        verified = envelope.verify(
            signed, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=self._trust, roles={Role.SPOKE}
        )
        reply = commands.parse_reply(verified.payload)
        if verified.peer != name or reply.responder != name:
            raise errors.SignatureInvalidError(f"status of {name} signed by {verified.peer}")
        if reply.request_digest != commands.digest(nonce):
            raise errors.InvalidCommandError("status not bound to this probe's nonce")
        if reply.WhichOneof("result") != "spoke_status" or reply.spoke_status.spoke != name:
            raise errors.InvalidCommandError("reply carries no status of this spoke")
        return reply.spoke_status

    def observe_heartbeat(
        self, name: str, status: command_pb2.SpokeStatus, at: dt.datetime, via: str = ""
    ) -> SpokeHealth:
        """A connect-mode spoke's verified heartbeat (``observe_status`` checked it); ``via``:
        the hubd holding its session when that is another one (read from its lease)."""
        prev = self._records.get(name, SpokeHealth(name))
        breaker = self._circuits.get(name)
        if breaker is not None and breaker.success():
            log.info("spoke_circuit_closed", spoke=name)
        self._publish_circuit(name)
        base = replace(
            prev,
            last_probe=at,
            last_seen=at,
            missed=0,
            protocol=status.protocol_version or version.PROTOCOL_VERSION,
            status=status,
        )
        detail = _degraded(status)
        if detail:
            return self._set(replace(base, state=SpokeState.DEGRADED, detail=detail))
        state = SpokeState.DRAINING if base.draining else SpokeState.READY
        return self._set(replace(base, state=state, detail=f"via hubd {via}" if via else ""))

    def observe_link_closed(self, name: str, at: dt.datetime | None, why: str) -> SpokeHealth:
        """A connect-mode spoke has no session (yet, or any more): DISCONNECTED."""
        prev = self._records.get(name, SpokeHealth(name))
        return self._set(
            replace(
                prev, state=SpokeState.DISCONNECTED, detail=why, last_probe=at or prev.last_probe
            )
        )

    def _answered(self, prev: SpokeHealth, probe: Probe) -> SpokeHealth:
        name = probe.entry.name
        base = replace(prev, last_probe=probe.at, missed=0, protocol=probe.protocol)
        if probe.incompatible:
            return replace(base, state=SpokeState.INCOMPATIBLE, detail="protocol mismatch")
        status: command_pb2.SpokeStatus | None = None
        detail = ""
        if probe.status:
            try:
                signed = command_pb2.SignedEnvelope.FromString(probe.status)
                status = self.observe_status(name, signed, probe.nonce, probe.at)
            except Exception as exc:  # a bad status is shown, never trusted
                log.warning("spoke_status_invalid", spoke=name, problem=str(exc))
                detail = "status failed verification"
        base = replace(base, last_seen=probe.at, status=status)
        if detail:
            return replace(base, state=SpokeState.DEGRADED, detail=detail)
        if status is not None:
            detail = _degraded(status)
        if not detail and not probe.ready:
            detail = "not serving"
        if detail:
            return replace(base, state=SpokeState.DEGRADED, detail=detail)
        state = SpokeState.DRAINING if base.draining else SpokeState.READY
        return replace(base, state=state, detail="")

    def _set(self, record: SpokeHealth) -> SpokeHealth:
        prev = self._records.get(record.name)
        self._records[record.name] = record
        if prev is None or prev.state != record.state:
            log.info(
                "spoke_health_changed",
                spoke=record.name,
                state=record.state.name,
                was=prev.state.name if prev else None,
                detail=record.detail or None,
            )
        if self._metrics is not None:
            self._metrics.set_spoke_health(record.name, record.state.name)
        return record

    def _publish_circuit(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.set_circuit(name, self.circuit(name).name)


def _degraded(status: command_pb2.SpokeStatus) -> str:
    reasons: Sequence[tuple[bool, str]] = (
        (not status.redis_ok, "redis down"),
        (status.queue_full, "queue full"),
        (status.paused, "queue paused"),
    )
    return ", ".join(why for bad, why in reasons if bad)


def _state_of(record: SpokeHealth, draining: bool) -> SpokeState:
    """READY or DRAINING for a spoke that answers well; its state otherwise."""
    if record.state in (SpokeState.READY, SpokeState.DRAINING):
        return SpokeState.DRAINING if draining else SpokeState.READY
    return record.state
