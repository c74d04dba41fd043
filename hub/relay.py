"""The hub's two hops: check what a client sent, and relay it to a spoke and check the answer.

Inbound (:class:`Gate`): the envelope must be a Command signed by a trusted client, whose
issuer is the signer (and, over mutual TLS, the peer the caller's certificate names:
``hubspoke.grpc.bind_signer``), with a valid id, window and nonce, and the body the RPC
expects.

Outbound (:class:`Relayer`): the client's envelope travels unchanged inside a Relay the hub
signs; the spoke's signed reply must be by that spoke and bound to the command (same
command_id, request_digest over the client's payload bytes). Spoke failures become
``SpokeUnavailableError`` (unreachable) or ``UnverifiedSpokeError`` (the spoke's own status,
passed on and marked as unverified).

A spoke's error is a gRPC status, which no one signs: whoever answers on the spoke's address
chooses its text, reason and metadata. So the hub passes on its code, keeps its reason only
if it is one of ours (else SPOKE_ERROR, the spoke's string kept in ``spoke_reason``), escapes
control characters in and bounds the length of every text, says "unverified error from spoke
S:" in front of the message and adds ``unverified = S`` to the metadata.

Exception hierarchy (the hub's own; the rest are ``hubspoke.errors``)::

    hubspoke.errors.CommandError
     ├── SpokeReplyError        (INTERNAL, SPOKE_REPLY_INVALID) a reply failed verification
     └── RemoteCallError
          └── UnverifiedSpokeError  (the spoke's code; its reason if ours, else SPOKE_ERROR)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import grpc
import structlog
from google.protobuf import timestamp_pb2

from hubspoke import commands, envelope, errors, version
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.keys import SigningKey
from hubspoke.metrics import known_reasons
from hubspoke.pacing import PacingConfig, Treatment, WatchPacing, paced
from hubspoke.trust import Role, TrustStore

from . import call_writes
from .metrics import HubMetrics
from .prefetch import NOTHING, Prefetched, Prefetcher
from .store import Admit

if TYPE_CHECKING:
    from .circuit import Circuits
    from .registry import SpokeRegistry

__all__ = [
    "Gate",
    "Inbound",
    "RelayConfig",
    "Relayer",
    "SpokeReplyError",
    "UnverifiedSpokeError",
    "Verb",
]

log = structlog.get_logger("hubspoke.hub.relay")

SPAWN: Final = "spawn_agent"
GET: Final = "get_agent"
KILL: Final = "kill_agent"
LIST: Final = "list_agents"
LIST_SPOKES: Final = "list_spokes"
WATCH: Final = "watch_agent"
QUEUE_STATS: Final = "get_queue_stats"
DEAD_LETTERS: Final = "list_dead_letters"
REPLAY: Final = "replay_agent"
PAUSE: Final = "pause_queue"
RESUME: Final = "resume_queue"
DRAIN: Final = "drain_queue"
VERIFY: Final = "verify_agent"
DRAIN_SPOKE: Final = "drain_spoke"
UNDRAIN_SPOKE: Final = "undrain_spoke"
WATCH_EVENTS: Final = "watch_events"
SEND: Final = "send_input"
APPROVE: Final = "approve_agent"
REJECT: Final = "reject_agent"
Verb = str
"""A Command body case name, e.g. spawn_agent, get_agent, kill_agent, list_agents."""


@dataclass(frozen=True, slots=True)
class _Route:
    """How one verb travels to a spoke: its RPC, request type and expected reply result."""

    rpc: str
    request: type[Any]
    result: str
    slow: bool = False
    """Kill waits for the agent's end, drain for the queue: they get the longer deadline."""


_ROUTES: Final[dict[str, _Route]] = {
    SPAWN: _Route("SpawnAgent", spoke_service_pb2.SpokeServiceSpawnAgentRequest, "agent"),
    GET: _Route("GetAgent", spoke_service_pb2.SpokeServiceGetAgentRequest, "agent"),
    KILL: _Route("KillAgent", spoke_service_pb2.SpokeServiceKillAgentRequest, "agent", True),
    LIST: _Route("ListAgents", spoke_service_pb2.SpokeServiceListAgentsRequest, "agent_page"),
    QUEUE_STATS: _Route(
        "GetQueueStats", spoke_service_pb2.SpokeServiceGetQueueStatsRequest, "queue_stats"
    ),
    DEAD_LETTERS: _Route(
        "ListDeadLetters", spoke_service_pb2.SpokeServiceListDeadLettersRequest, "agent_page"
    ),
    REPLAY: _Route("ReplayAgent", spoke_service_pb2.SpokeServiceReplayAgentRequest, "agent"),
    PAUSE: _Route("PauseQueue", spoke_service_pb2.SpokeServicePauseQueueRequest, "queue_stats"),
    RESUME: _Route("ResumeQueue", spoke_service_pb2.SpokeServiceResumeQueueRequest, "queue_stats"),
    DRAIN: _Route(
        "DrainQueue", spoke_service_pb2.SpokeServiceDrainQueueRequest, "queue_stats", True
    ),
    WATCH: _Route("WatchAgent", spoke_service_pb2.SpokeServiceWatchAgentRequest, "agent_event"),
    WATCH_EVENTS: _Route(
        "WatchEvents", spoke_service_pb2.SpokeServiceWatchEventsRequest, "feed_entry"
    ),
    VERIFY: _Route("VerifyAgent", spoke_service_pb2.SpokeServiceVerifyAgentRequest, "agent"),
    SEND: _Route("SendInput", spoke_service_pb2.SpokeServiceSendInputRequest, "agent"),
    APPROVE: _Route("ApproveAgent", spoke_service_pb2.SpokeServiceApproveAgentRequest, "agent"),
    REJECT: _Route("RejectAgent", spoke_service_pb2.SpokeServiceRejectAgentRequest, "agent"),
}

MEMBERSHIP_RECHECK_S: Final = 0.5
"""How often a relayed stream checks the membership revision (hub/membership.py): a removed
spoke's watch ends within this, without a Redis read per event."""
HELD_EVENTS: Final = 16
"""Events one relayed watch holds back while over its rate before it stops reading the spoke
(which then merges output itself)."""

_UNREACHABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_CALL_METADATA: Final = grpc.aio.Metadata(*version.CALL_METADATA)
"""version.CALL_METADATA as grpc.aio takes it, built once (each call copies it)."""
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


class SpokeReplyError(errors.CommandError):
    """A spoke's reply was not signed by it, or does not answer the command relayed."""

    code = grpc.StatusCode.INTERNAL
    reason = "SPOKE_REPLY_INVALID"


class UnverifiedSpokeError(errors.RemoteCallError):
    """A spoke's error status passed on to the client, marked as not verified (unsigned)."""

    reason = "SPOKE_ERROR"
    """The reason given in place of a spoke's reason that is none of ours."""

    MAX_TEXT: Final = 300
    """Longest message, metadata key or value taken from a spoke, in characters."""
    MAX_METADATA: Final = 16
    """Most metadata entries taken from a spoke."""

    @classmethod
    def of(cls, spoke: str, failure: sgrpc.CallFailure) -> UnverifiedSpokeError:
        metadata = {
            _clean(k, cls.MAX_TEXT): _clean(v, cls.MAX_TEXT)
            for k, v in sorted(failure.metadata.items())[: cls.MAX_METADATA]
        }
        reason = failure.reason
        if reason not in known_reasons():
            metadata["spoke_reason"] = _clean(reason, cls.MAX_TEXT)
            reason = cls.reason
        metadata["unverified"] = spoke
        message = f"unverified error from spoke {spoke}: {_clean(failure.message, cls.MAX_TEXT)}"
        return cls(failure.code, reason, message, metadata)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A client's command that passed every check, with the envelope it came in."""

    envelope: command_pb2.SignedEnvelope
    command: command_pb2.Command
    accepted: dt.datetime = field(default_factory=commands.now)
    """When the hub accepted it (inside its window): every relay of it carries this as
    ``accept_time``; the spoke judges the client's window, a spawn's delay and its start
    deadline by it (spoke/verifier.py)."""
    prefetched: Prefetched = NOTHING
    """What the hub read from its Redis for it with the admission (hub/prefetch.py)."""

    @property
    def verb(self) -> Verb:
        return self.command.WhichOneof("body") or ""

    @property
    def digest(self) -> bytes:
        return commands.digest(self.envelope.payload)


class Gate:
    """Checks inbound client commands: signature, issuer, id, window, body, nonce."""

    def __init__(
        self,
        trust: TrustStore,
        window: commands.Window,
        admit: Admit,
        hub_name: str,
        prefetch: Prefetcher | None = None,
    ) -> None:
        """``prefetch``: the reads each command needs, read with its admission."""
        self._trust = trust
        self._window = window
        self._admit = admit
        self._hub = hub_name
        self._prefetch = prefetch

    async def admit(self, env: command_pb2.SignedEnvelope, verb: Verb) -> Inbound:
        """Verify ``env`` as a client's command whose body is ``verb``; claim its nonce.

        Raises:
            InvalidCommandError, SignatureInvalidError, CommandExpiredError,
            NonceReusedError, BackendUnavailableError.
        """
        verified = envelope.verify(
            env, payload_type=envelope.PAYLOAD_TYPE_COMMAND, trust=self._trust, roles={Role.CLIENT}
        )
        cmd = commands.parse_command(verified.payload)
        if cmd.issuer != verified.peer:
            raise errors.SignatureInvalidError("issuer does not match the signing key")
        sgrpc.bind_command(cmd.command_id, cmd.issuer)
        sgrpc.bind_signer(cmd.issuer, "command")  # over mTLS: the certificate names the issuer
        commands.check_command_id(cmd.command_id)
        accepted = commands.now()
        expires = commands.check_window(
            cmd.issue_time, cmd.expire_time, cmd.nonce, self._window, at=accepted
        )
        body = cmd.WhichOneof("body")
        if body is None:
            raise errors.InvalidCommandError("command has no body")
        if body != verb:
            raise errors.InvalidCommandError(f"command body {body} does not fit this call")
        if body in commands.AGENT_BODIES:
            commands.check_agent_ref(getattr(cmd, body).agent)
        if not cmd.audience:
            raise errors.InvalidCommandError("command has no audience")
        if self._prefetch is None:
            await self._admit(cmd.issuer, cmd.nonce, expires)
            return Inbound(envelope=env, command=cmd, accepted=accepted)
        plan = self._prefetch.plan(cmd)
        replies = await self._admit(cmd.issuer, cmd.nonce, expires, plan.queue)
        return Inbound(env, cmd, accepted, plan.parse(replies))


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """How the hub signs relays and calls spokes."""

    hub_name: str
    key: SigningKey
    relay_validity: dt.timedelta
    call_timeout_s: float
    kill_timeout_s: float
    pacing: PacingConfig = field(default_factory=PacingConfig)
    """Events per second a relayed watch stream, and one principal's streams, may carry."""


class Relayer:
    """Wraps a client's command in a signed Relay, calls the spoke, verifies its reply."""

    def __init__(
        self,
        cfg: RelayConfig,
        trust: TrustStore,
        registry: SpokeRegistry,
        metrics: HubMetrics,
        circuits: Circuits | None = None,
    ) -> None:
        """``circuits``: a breaker per spoke (hub/circuit.py); while one is open, calls to
        its spoke fail at once with SPOKE_CIRCUIT_OPEN."""
        self._cfg = cfg
        self._trust = trust
        self._registry = registry
        self._metrics = metrics
        self._circuits = circuits
        self._pacing = WatchPacing(cfg.pacing)

    def circuit_check(self, spoke: str) -> None:
        """Raise ``CircuitOpenError`` if the spoke's circuit is not closed."""
        breaker = self._circuits.get(spoke) if self._circuits is not None else None
        if breaker is not None:
            breaker.check()

    def _count(self, spoke: str, reached: bool) -> None:
        breaker = self._circuits.get(spoke) if self._circuits is not None else None
        if breaker is None:
            return
        if reached:
            breaker.success()
        elif breaker.failure():
            log.warning("spoke_circuit_opened", spoke=spoke, failures=breaker.failures)

    def wrap(self, spoke: str, inbound: Inbound) -> command_pb2.SignedEnvelope:
        """A fresh Relay to ``spoke`` around the client's envelope, signed by the hub."""
        at = commands.now()
        relay = command_pb2.Relay(
            issuer=self._cfg.hub_name,
            audience=spoke,
            issue_time=_stamp(at),
            expire_time=_stamp(at + self._cfg.relay_validity),
            nonce=secrets.token_bytes(24),
            command=inbound.envelope,
            accept_time=_stamp(min(inbound.accepted, at)),
        )
        return envelope.sign(relay.SerializeToString(), envelope.PAYLOAD_TYPE_RELAY, self._cfg.key)

    async def call(
        self,
        spoke: str,
        inbound: Inbound,
        timeout_s: float | None = None,
        *,
        check_later: bool = False,
    ) -> tuple[command_pb2.SignedEnvelope, command_pb2.Reply]:
        """Relay ``inbound`` to ``spoke``; return the spoke's signed reply and its parsed form.

        Args:
            timeout_s: a shorter deadline than the verb's own (a fan-out's remaining time).
            check_later: the call answers with this reply (no fan-out or rehearsal judges
                it): in an audited call, leave the membership revision check to the call's
                audit commit (hub/call_writes.py) instead of reading it now.

        Raises:
            CircuitOpenError: the spoke's circuit is open; nothing was sent.
            SpokeUnavailableError: the spoke did not answer in time.
            RemoteCallError: the spoke answered with an error (its code and reason kept).
            SpokeReplyError: the reply failed verification.
        """
        self.circuit_check(spoke)
        link = self._registry.link(spoke)
        route = _route(inbound.verb)
        relay_env = self.wrap(spoke, inbound)
        timeout = self._cfg.kill_timeout_s if route.slow else self._cfg.call_timeout_s
        if timeout_s is not None:
            timeout = min(timeout, timeout_s)
        started = time.monotonic()
        try:
            method = getattr(link.stub, route.rpc)
            response = await method(
                route.request(command=relay_env), timeout=timeout, metadata=_CALL_METADATA
            )
        except grpc.aio.AioRpcError as exc:
            self._metrics.observe_spoke_call(spoke, exc.code(), time.monotonic() - started)
            failed = _spoke_error(spoke, exc)
            self._count(spoke, not isinstance(failed, errors.SpokeUnavailableError))
            raise failed from exc
        self._metrics.observe_spoke_call(spoke, grpc.StatusCode.OK, time.monotonic() - started)
        self._count(spoke, True)
        reply_env: command_pb2.SignedEnvelope = response.reply
        revision = self._registry.revision
        if check_later and revision is not None and call_writes.collecting_now():
            try:  # against the copy read at admission; the audit commit checks it still holds
                reply = self.check_reply(spoke, inbound, reply_env, quiet=True)
            except SpokeReplyError:
                pass  # e.g. re-enrolled meanwhile: verified again with a fresh copy, below
            else:
                call_writes.check_later(revision, self._recheck(spoke, inbound, reply_env))
                return reply_env, reply
        await self._registry.fresh()  # membership revision: a removed spoke is refused now
        return reply_env, self.check_reply(spoke, inbound, reply_env)

    def _recheck(
        self, spoke: str, inbound: Inbound, reply_env: command_pb2.SignedEnvelope
    ) -> Callable[[], Awaitable[None]]:
        async def recheck() -> None:
            await self._registry.fresh()
            self.check_reply(spoke, inbound, reply_env)

        return recheck

    async def stream(
        self, spoke: str, inbound: Inbound, timeout_s: float
    ) -> AsyncIterator[command_pb2.SignedEnvelope]:
        """Relay a watch; yield each signed event reply after verifying it, paced: at most
        the configured events per second for this stream and for the issuer's streams, the
        newest progress kept and heartbeats skipped when over it (the spoke signed each event,
        so none is changed; state changes are never dropped)."""
        with self._pacing.stream(inbound.command.issuer) as pacer:
            events = paced(
                self._stream(spoke, inbound, timeout_s), pacer, _treatment, max_held=HELD_EVENTS
            )
            async with contextlib.aclosing(events):
                async for reply_env, _ in events:
                    yield reply_env

    def feed(
        self, spoke: str, inbound: Inbound, timeout_s: float
    ) -> AsyncIterator[tuple[command_pb2.SignedEnvelope, command_pb2.Reply]]:
        """Relay a watch_events; yield each verified feed entry reply, unpaced (the entries
        are state changes, which are never dropped or held back)."""
        return self._stream(spoke, inbound, timeout_s)

    async def _stream(
        self, spoke: str, inbound: Inbound, timeout_s: float
    ) -> AsyncIterator[tuple[command_pb2.SignedEnvelope, command_pb2.Reply]]:
        self.circuit_check(spoke)
        link = self._registry.link(spoke)
        route = _route(inbound.verb)
        call = getattr(link.stub, route.rpc)(  # WatchAgent, or WatchEvents (hub/events.py)
            route.request(command=self.wrap(spoke, inbound)),
            timeout=timeout_s,
            metadata=version.CALL_METADATA,
        )
        try:
            checked = 0.0
            async for response in call:
                if time.monotonic() - checked >= MEMBERSHIP_RECHECK_S:
                    await self._registry.fresh()  # a removed spoke's stream ends within it
                    checked = time.monotonic()
                yield response.reply, self.check_reply(spoke, inbound, response.reply)
        except grpc.aio.AioRpcError as exc:
            raise _spoke_error(spoke, exc) from exc
        finally:
            call.cancel()

    def check_reply(
        self,
        spoke: str,
        inbound: Inbound,
        reply_env: command_pb2.SignedEnvelope,
        *,
        quiet: bool = False,
    ) -> command_pb2.Reply:
        """Verify a spoke's reply: signed by ``spoke``, answering exactly this command.
        ``quiet``: a refusal is neither logged nor counted (it is checked again)."""
        try:
            verified = envelope.verify(
                reply_env,
                payload_type=envelope.PAYLOAD_TYPE_REPLY,
                trust=self._trust,
                roles={Role.SPOKE},
            )
            reply = commands.parse_reply(verified.payload)
        except errors.CommandError as exc:
            self._rejected(quiet, "spoke_reply_invalid", spoke, problem=exc.message)
            raise SpokeReplyError(f"spoke {spoke} sent a reply that failed verification") from exc
        if verified.peer != spoke or reply.responder != spoke:
            self._rejected(quiet, "spoke_reply_wrong_signer", spoke, signer=verified.peer)
            raise SpokeReplyError(f"spoke {spoke} sent a reply signed by another peer")
        want = _route(inbound.verb).result
        if inbound.verb == SPAWN and inbound.command.spawn_agent.dry_run:
            want = "placement"  # a rehearsal: the spoke answers with its Placement
        if (
            reply.command_id != inbound.command.command_id
            or reply.request_digest != inbound.digest
            or reply.WhichOneof("result") != want
        ):
            self._rejected(quiet, "spoke_reply_mismatch", spoke)
            raise SpokeReplyError("spoke reply does not match the command")
        return reply

    def _rejected(self, quiet: bool, event: str, spoke: str, **detail: str) -> None:
        if not quiet:
            log.warning(event, spoke=spoke, **detail)
            self._metrics.reply_rejected(spoke)


_EVENT_TREATMENTS: Final = {
    agent_pb2.AgentEvent.Kind.KIND_STATE: Treatment.URGENT,
    agent_pb2.AgentEvent.Kind.KIND_PROGRESS: Treatment.LATEST,
    agent_pb2.AgentEvent.Kind.KIND_HEARTBEAT: Treatment.IDLE,
}


def _treatment(event: tuple[command_pb2.SignedEnvelope, command_pb2.Reply]) -> Treatment:
    """How a relayed event waits when its stream is over its rate (hubspoke.pacing)."""
    return _EVENT_TREATMENTS.get(event[1].agent_event.kind, Treatment.ORDERED)


def _stamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    """``commands.to_timestamp(at)`` (an aware datetime) without Timestamp.FromDatetime's
    per-call conversions: the same seconds and nanos."""
    seconds, micros = divmod((at - _EPOCH) // _MICROSECOND, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def _route(verb: Verb) -> _Route:
    route = _ROUTES.get(verb)
    if route is None:
        raise errors.InvalidCommandError(f"{verb or 'an empty command'} cannot be relayed")
    return route


def _spoke_error(spoke: str, exc: grpc.aio.AioRpcError) -> errors.CommandError:
    failure = sgrpc.from_rpc_error(exc)
    if failure.code in _UNREACHABLE and not failure.reason:
        log.info("spoke_unreachable", spoke=spoke, code=failure.code.name)
        return errors.SpokeUnavailableError(f"spoke {spoke} is unreachable", spoke=spoke)
    return UnverifiedSpokeError.of(spoke, failure)


def _clean(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, every unprintable one (control, format such as
    bidi overrides, line breaks) escaped, so it cannot move a terminal's cursor."""
    cut = text[:limit]
    shown = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut
    )
    return shown + ("…" if len(text) > limit else "")
