"""The client's own types: frozen values read from the wire messages, each keeping its ``raw``.

The enums carry the wire numbers, so ``AgentState.RUNNING == agent_pb2.Agent.STATE_RUNNING``;
a number this client does not know (a newer server) reads as ``UNSPECIFIED`` and stays
visible in ``raw``. Times are aware UTC datetimes, spans are timedeltas, and a field the
message leaves unset is ``None``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from hubspoke.gen.federation.v1 import agent_pb2, command_pb2

from ._modes import RunMode, ShadowRun

__all__ = [
    "FINAL_STATES",
    "WAITING_ON_PEOPLE",
    "Agent",
    "AgentEvent",
    "AgentList",
    "AgentPage",
    "AgentState",
    "Artifact",
    "CircuitState",
    "EventKind",
    "FederatedQueueStats",
    "ProfileCapacity",
    "QueueStats",
    "Receipt",
    "Spoke",
    "SpokeCapacity",
    "SpokeHealth",
    "Verification",
]

_E = TypeVar("_E", bound=enum.IntEnum)


class AgentState(enum.IntEnum):
    """An agent's state; ``QUEUED → STARTING → RUNNING → SUCCEEDED | FAILED | ...``."""

    UNSPECIFIED = agent_pb2.Agent.STATE_UNSPECIFIED
    QUEUED = agent_pb2.Agent.STATE_QUEUED
    STARTING = agent_pb2.Agent.STATE_STARTING
    RUNNING = agent_pb2.Agent.STATE_RUNNING
    SUCCEEDED = agent_pb2.Agent.STATE_SUCCEEDED
    FAILED = agent_pb2.Agent.STATE_FAILED
    KILLED = agent_pb2.Agent.STATE_KILLED
    TIMED_OUT = agent_pb2.Agent.STATE_TIMED_OUT
    DEAD_LETTERED = agent_pb2.Agent.STATE_DEAD_LETTERED
    RETRYING = agent_pb2.Agent.STATE_RETRYING
    NEEDS_INPUT = agent_pb2.Agent.STATE_NEEDS_INPUT
    """Its receipt said ``blocked``: it waits for someone's input (or a kill)."""
    NEEDS_VERIFICATION = agent_pb2.Agent.STATE_NEEDS_VERIFICATION
    """Its receipt said ``completed`` with items not passed: it waits for ``verify`` until
    ``Agent.verify_deadline``, then ends FAILED (VERIFICATION_TIMEOUT)."""
    EXPIRED = agent_pb2.Agent.STATE_EXPIRED
    """It did not start by ``Agent.start_deadline`` (reason NOT_STARTED) and never ran."""
    AWAITING_APPROVAL = agent_pb2.Agent.STATE_AWAITING_APPROVAL
    """Its policy asks for approvals: held at its spoke until ``approve`` by enough
    approvers (then QUEUED), a ``reject``, or ``Agent.approval_deadline``."""
    REJECTED = agent_pb2.Agent.STATE_REJECTED
    """Rejected by an approver (REJECTED_BY_APPROVER) or not approved in its window
    (APPROVAL_EXPIRED); it never ran."""
    SHADOWED = agent_pb2.Agent.STATE_SHADOWED
    """Its spoke or profile runs in shadow mode: it never ran; ``Agent.shadow_run`` says what
    would have."""
    PENDING_DELIVERY = agent_pb2.Agent.STATE_PENDING_DELIVERY
    """Its spoke was unreachable: the hub holds the spawn in its outbox and delivers it when
    the spoke is back, or ends it EXPIRED (UNDELIVERED) at ``Agent.start_deadline``."""

    @property
    def final(self) -> bool:
        """Whether an agent in this state never leaves it."""
        return self in FINAL_STATES

    @property
    def settled(self) -> bool:
        """Final, or waiting on a person (NEEDS_INPUT, NEEDS_VERIFICATION): where
        :meth:`Client.wait` returns."""
        return self in FINAL_STATES or self in WAITING_ON_PEOPLE

    @classmethod
    def parse(cls, text: str) -> AgentState:
        """``running``, ``RUNNING`` or ``STATE_RUNNING`` → ``RUNNING``.

        Raises:
            ValueError: not a state name (``UNSPECIFIED`` is not one either).
        """
        name = text.strip().upper().removeprefix("STATE_")
        if name == "UNSPECIFIED" or name not in cls.__members__:
            raise ValueError(text)
        return cls[name]


FINAL_STATES: Final = frozenset(
    {
        AgentState.SUCCEEDED,
        AgentState.FAILED,
        AgentState.KILLED,
        AgentState.TIMED_OUT,
        AgentState.DEAD_LETTERED,
        AgentState.EXPIRED,
        AgentState.SHADOWED,
        AgentState.REJECTED,
    }
)
"""States an agent never leaves."""

WAITING_ON_PEOPLE: Final = frozenset(
    {AgentState.NEEDS_INPUT, AgentState.NEEDS_VERIFICATION, AgentState.AWAITING_APPROVAL}
)
"""States an agent leaves only when someone acts (send, verify, kill) or a window closes."""


class EventKind(enum.IntEnum):
    """What an :class:`AgentEvent` reports."""

    UNSPECIFIED = agent_pb2.AgentEvent.KIND_UNSPECIFIED
    STATE = agent_pb2.AgentEvent.KIND_STATE
    PROGRESS = agent_pb2.AgentEvent.KIND_PROGRESS
    STDOUT = agent_pb2.AgentEvent.KIND_STDOUT
    STDERR = agent_pb2.AgentEvent.KIND_STDERR
    HEARTBEAT = agent_pb2.AgentEvent.KIND_HEARTBEAT
    DROPPED = agent_pb2.AgentEvent.KIND_DROPPED
    INPUT = agent_pb2.AgentEvent.KIND_INPUT
    APPROVAL = agent_pb2.AgentEvent.KIND_APPROVAL
    """An approver's verified approval (``approver``; ``data`` its reason), or rejection
    (``data`` ``rejected: <reason>``)."""


class SpokeHealth(enum.IntEnum):
    """A spoke's health as the hub's last probe saw it."""

    UNSPECIFIED = command_pb2.Spoke.HEALTH_UNSPECIFIED
    READY = command_pb2.Spoke.HEALTH_READY
    UNREACHABLE = command_pb2.Spoke.HEALTH_UNREACHABLE
    INCOMPATIBLE = command_pb2.Spoke.HEALTH_INCOMPATIBLE
    """It answers, but speaks another protocol version than the hub (docs/operations.md)."""
    DEGRADED = command_pb2.Spoke.HEALTH_DEGRADED
    """It answers, but its Redis is down or its queue is full or paused (``health_detail``)."""
    DRAINING = command_pb2.Spoke.HEALTH_DRAINING
    """An operator drains it: no new placements."""
    DISCONNECTED = command_pb2.Spoke.HEALTH_DISCONNECTED
    """It missed the hub's last probes (``missed_probes_down`` in a row)."""


class CircuitState(enum.IntEnum):
    """The hub's circuit breaker for a spoke; while OPEN or HALF_OPEN, calls fail at once."""

    UNSPECIFIED = command_pb2.Spoke.CIRCUIT_UNSPECIFIED
    CLOSED = command_pb2.Spoke.CIRCUIT_CLOSED
    OPEN = command_pb2.Spoke.CIRCUIT_OPEN
    HALF_OPEN = command_pb2.Spoke.CIRCUIT_HALF_OPEN


@dataclass(frozen=True, slots=True)
class ProfileCapacity:
    """One profile's run slots on a spoke (0 max_concurrency: unlimited)."""

    profile: str
    max_concurrency: int
    free_slots: int
    mode: RunMode = RunMode.UNSPECIFIED
    """The mode its agents run in on the spoke."""


@dataclass(frozen=True, slots=True)
class SpokeCapacity:
    """What a spoke last reported about itself, signed by it (the hub verified it)."""

    redis_ok: bool
    running: int
    queued: int
    delayed: int
    paused: bool
    draining: bool
    queue_full: bool
    profiles: Sequence[ProfileCapacity]
    version: str
    observed: dt.datetime | None
    raw: command_pb2.SpokeStatus = field(repr=False, compare=False)
    mode: RunMode = RunMode.UNSPECIFIED
    """The spoke's run mode (live, shadow, synthetic); UNSPECIFIED from an older spoke."""

    @classmethod
    def from_proto(cls, msg: command_pb2.SpokeStatus) -> SpokeCapacity:
        return cls(
            redis_ok=msg.redis_ok,
            running=msg.running,
            queued=msg.queued,
            delayed=msg.delayed,
            paused=msg.paused,
            draining=msg.draining,
            queue_full=msg.queue_full,
            profiles=tuple(
                ProfileCapacity(p.profile, p.max_concurrency, p.free_slots, RunMode.of(p.mode))
                for p in msg.profiles
            ),
            version=msg.version,
            observed=_time(msg.observe_time, msg.HasField("observe_time")),
            raw=msg,
            mode=RunMode.of(msg.mode),
        )


def _enum(cls: type[_E], value: int) -> _E:
    try:
        return cls(value)
    except ValueError:
        return cls(0)  # a newer server's value: UNSPECIFIED here, still in ``raw``


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
"""The seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC: a Timestamp's valid range."""


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> dt.datetime | None:
    """``ts.ToDatetime(tzinfo=dt.UTC)`` (microseconds, rounded toward zero), without its
    checks and time-zone conversion when the value is in range (else that, which raises)."""
    if not present:
        return None
    seconds, nanos = ts.seconds, ts.nanos
    if 0 <= nanos < 1_000_000_000 and _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    return ts.ToDatetime(tzinfo=dt.UTC)


def _span(d: duration_pb2.Duration, present: bool) -> dt.timedelta | None:
    return d.ToTimedelta() if present else None


def _labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(labels))


@dataclass(frozen=True, slots=True)
class Verification:
    """One check an agent's receipt reports (its status as ``verify`` settled it, if so)."""

    name: str
    status: str
    detail: str = ""
    kind: str = ""
    value: str = ""
    expected: str = ""
    verified_by: str = ""
    """Who settled it with ``verify``; "" while the agent's own report stands."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One artifact of a receipt: its text, an object's kind, and its JSON."""

    value: str
    kind: str = ""
    json: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    """The structured result an agent printed as its last stdout line."""

    status: str
    """``completed``, ``blocked`` or ``failed``."""
    summary: str
    artifacts: tuple[str, ...]
    verifications: tuple[Verification, ...]
    json: str
    """The receipt's JSON text as the agent printed it, whole."""
    raw: agent_pb2.Receipt = field(repr=False, compare=False)
    blockers: tuple[str, ...] = ()
    error: str = ""
    """Why the spoke could not read the receipt (``receipt: not JSON``, …), or ""."""
    artifact_details: tuple[Artifact, ...] = ()

    @classmethod
    def from_proto(cls, msg: agent_pb2.Receipt) -> Receipt:
        return cls(
            status=msg.status,
            summary=msg.summary,
            artifacts=tuple(msg.artifacts),
            verifications=tuple(
                Verification(v.name, v.status, v.detail, v.kind, v.value, v.expected, v.verified_by)
                for v in msg.verifications
            ),
            json=msg.json,
            raw=msg,
            blockers=tuple(msg.blockers),
            error=msg.error,
            artifact_details=tuple(Artifact(a.value, a.kind, a.json) for a in msg.artifact_details),
        )


@dataclass(frozen=True, slots=True)
class Agent:
    """One agent on one spoke, as the spoke signed it."""

    name: str
    """The resource name ``spokes/{spoke}/agents/{agent_id}``."""
    agent_id: str
    spoke: str
    profile: str
    state: AgentState
    reason: str
    """Why it is in its state (``EXIT_NONZERO``, ``DRAINED``, ...), or ""."""
    priority: int
    issuer: str
    """The principal whose command spawned it."""
    task: str
    create_time: dt.datetime | None
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    exit_code: int | None
    stdout_tail: str
    stderr_tail: str
    attempt: int
    max_attempts: int
    timeout: dt.timedelta | None
    labels: Mapping[str, str]
    progress_percent: int
    """The last progress report, -1 before any."""
    progress_message: str
    receipt: Receipt | None
    raw: agent_pb2.Agent = field(repr=False, compare=False)
    verify_deadline: dt.datetime | None = None
    """While NEEDS_VERIFICATION: when it fails unless its items are settled."""
    start_deadline: dt.datetime | None = None
    """When it must have started (acceptance + start_within), else it ends EXPIRED."""
    inputs: int = 0
    """How many messages ``send`` kept for it."""
    kill_pending: bool = False
    """A kill of it waits in the hub's outbox until its spoke is reachable (hub-signed)."""
    mode: RunMode = RunMode.UNSPECIFIED
    """The mode its spoke ran it in (decided when a worker took it)."""
    shadow_run: ShadowRun | None = None
    """SHADOWED: what would have run."""
    approvals_required: int = 0
    """Distinct approvals its policy asked for before it could be queued; 0: none."""
    approvers: tuple[str, ...] = ()
    """Who may approve or reject it."""
    approved_by: tuple[str, ...] = ()
    """The approvers whose signed approvals its spoke verified, in order."""
    approval_deadline: dt.datetime | None = None
    """While AWAITING_APPROVAL: when it ends REJECTED (APPROVAL_EXPIRED)."""
    dedupe_key: str = ""
    """The spawn's dedupe key (its own, or derived from profile and task); "" for none."""
    deduplicated: bool = False
    """In a spawn's answer: this is the caller's unfinished agent holding the spawn's dedupe
    key, returned instead of a new one (its id is not the spawn's command id)."""

    @property
    def final(self) -> bool:
        """Whether the agent has ended (its state never changes again)."""
        return self.state.final

    @classmethod
    def from_proto(cls, msg: agent_pb2.Agent) -> Agent:
        return cls(
            name=msg.name,
            agent_id=msg.agent_id,
            spoke=msg.spoke,
            profile=msg.profile,
            state=_enum(AgentState, msg.state),
            reason=msg.reason,
            priority=msg.priority,
            issuer=msg.issuer,
            task=msg.task,
            create_time=_time(msg.create_time, msg.HasField("create_time")),
            start_time=_time(msg.start_time, msg.HasField("start_time")),
            end_time=_time(msg.end_time, msg.HasField("end_time")),
            exit_code=msg.exit_code if msg.HasField("exit_code") else None,
            stdout_tail=msg.stdout_tail,
            stderr_tail=msg.stderr_tail,
            attempt=msg.attempt,
            max_attempts=msg.max_attempts,
            timeout=_span(msg.timeout, msg.HasField("timeout")),
            labels=_labels(msg.labels),
            progress_percent=msg.progress_percent,
            progress_message=msg.progress_message,
            receipt=Receipt.from_proto(msg.receipt) if msg.HasField("receipt") else None,
            raw=msg,
            verify_deadline=_time(msg.verify_deadline, msg.HasField("verify_deadline")),
            start_deadline=_time(msg.start_deadline, msg.HasField("start_deadline")),
            inputs=msg.inputs,
            kill_pending=msg.kill_pending,
            mode=RunMode.of(msg.mode),
            shadow_run=(
                ShadowRun.from_proto(msg.shadow_run) if msg.HasField("shadow_run") else None
            ),
            approvals_required=msg.approvals_required,
            approvers=tuple(msg.approvers),
            approved_by=tuple(msg.approved_by),
            approval_deadline=_time(msg.approval_deadline, msg.HasField("approval_deadline")),
            dedupe_key=msg.dedupe_key,
            deduplicated=msg.deduplicated,
        )


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event of an agent's life: a state change, progress, output, or a heartbeat."""

    agent_id: str
    sequence: int
    """Increasing per agent; a heartbeat repeats the last sequence sent."""
    kind: EventKind
    event_time: dt.datetime | None
    state: AgentState
    """For ``STATE`` events: the new state."""
    reason: str
    data: str
    """The output chunk (``STDOUT``/``STDERR``), the progress message, or the count of bytes
    not recorded (``DROPPED``)."""
    progress_percent: int
    raw: agent_pb2.AgentEvent = field(repr=False, compare=False)
    sender: str = ""
    """For ``INPUT`` events: who sent the message (its text is ``data``)."""
    input_sequence: int = 0
    """For ``INPUT`` events: the message's number in the agent's inbox, from 1."""
    approver: str = ""
    """For ``APPROVAL`` events: who approved or rejected."""

    @classmethod
    def from_proto(cls, msg: agent_pb2.AgentEvent) -> AgentEvent:
        return cls(
            agent_id=msg.agent_id,
            sequence=msg.sequence,
            kind=_enum(EventKind, msg.kind),
            event_time=_time(msg.event_time, msg.HasField("event_time")),
            state=_enum(AgentState, msg.state),
            reason=msg.reason,
            data=msg.data,
            progress_percent=msg.progress_percent,
            raw=msg,
            sender=msg.sender,
            input_sequence=msg.input_sequence,
            approver=msg.approver,
        )


@dataclass(frozen=True, slots=True)
class Spoke:
    """One of the hub's spokes, as the hub signed it."""

    name: str
    address: str
    health: SpokeHealth
    last_probe_time: dt.datetime | None
    labels: Mapping[str, str]
    raw: command_pb2.Spoke = field(repr=False, compare=False)
    last_seen_time: dt.datetime | None = None
    """When it last answered the hub's probe well."""
    health_detail: str = ""
    """Why it is not READY, in words."""
    circuit: CircuitState = CircuitState.UNSPECIFIED
    capacity: SpokeCapacity | None = None
    """Its last signed status (None if it never reported one)."""
    protocol_version: int = 0
    draining: bool = False
    """An operator drains it: no new placements (hubctl spoke drain)."""
    enrolled: bool = False
    """It joined with a token (hubctl spoke enroll), not from the hub's config."""
    link_mode: str = ""
    """How the hub reaches it: ``dial`` or ``connect`` (empty: a hub that does not say)."""
    outbox_depth: int = 0
    """Commands the hub holds for it until it is reachable (spawns and kills)."""
    oldest_outbox_time: dt.datetime | None = None
    """When the oldest of them was accepted (None: none held)."""

    @classmethod
    def from_proto(cls, msg: command_pb2.Spoke) -> Spoke:
        return cls(
            name=msg.name,
            address=msg.address,
            health=_enum(SpokeHealth, msg.health),
            last_probe_time=_time(msg.last_probe_time, msg.HasField("last_probe_time")),
            labels=_labels(msg.labels),
            raw=msg,
            last_seen_time=_time(msg.last_seen_time, msg.HasField("last_seen_time")),
            health_detail=msg.health_detail,
            circuit=_enum(CircuitState, msg.circuit),
            capacity=SpokeCapacity.from_proto(msg.status) if msg.HasField("status") else None,
            protocol_version=msg.protocol_version,
            draining=msg.draining,
            enrolled=msg.enrolled,
            link_mode=msg.link_mode,
            outbox_depth=msg.outbox_depth,
            oldest_outbox_time=_time(msg.oldest_outbox_time, msg.HasField("oldest_outbox_time")),
        )


@dataclass(frozen=True, slots=True)
class FederatedQueueStats:
    """Every spoke's queue counts from one fan-out, and the spokes that gave none (and why,
    as the hub signed it: circuit_open, disconnected, deadline, unavailable, error)."""

    per_spoke: Mapping[str, QueueStats]
    unreachable_spokes: Sequence[str]
    unreachable_reasons: Mapping[str, str]

    @property
    def totals(self) -> dict[str, int]:
        """The counts summed over the spokes that answered (``paused``: how many are)."""
        keys = ("waiting", "delayed", "active", "completed", "failed", "workers")
        out = {k: sum(getattr(s, k) for s in self.per_spoke.values()) for k in keys}
        out["paused"] = sum(1 for s in self.per_spoke.values() if s.paused)
        return out


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One spoke's queue counts."""

    waiting: int
    delayed: int
    active: int
    completed: int
    failed: int
    paused: bool
    workers: int
    drained: int
    """For a drain: how many waiting agents it cancelled."""
    raw: command_pb2.QueueStats = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: command_pb2.QueueStats) -> QueueStats:
        return cls(
            waiting=msg.waiting,
            delayed=msg.delayed,
            active=msg.active,
            completed=msg.completed,
            failed=msg.failed,
            paused=msg.paused,
            workers=msg.workers,
            drained=msg.drained,
            raw=msg,
        )


@dataclass(frozen=True, slots=True)
class AgentPage:
    """A page of one spoke's agents."""

    agents: tuple[Agent, ...]
    next_page_token: str
    """Pass it back for the next page; "" on the last."""
    raw: command_pb2.AgentPage = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, msg: command_pb2.AgentPage) -> AgentPage:
        return cls(tuple(Agent.from_proto(a) for a in msg.agents), msg.next_page_token, msg)


@dataclass(frozen=True, slots=True)
class AgentList:
    """Agents from every spoke that answered a listing, and the spokes that did not."""

    agents: Sequence[Agent]
    unreachable_spokes: Sequence[str]
    """The spokes that did not answer in time, by name (a list, as on the wire)."""
    pages: Mapping[str, AgentPage]
    """Each answering spoke's page, by spoke name."""
    unreachable_reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Why each unreachable spoke gave no page, as the hub signed it: ``circuit_open``,
    ``disconnected``, ``deadline``, ``unavailable`` or ``error`` (empty from an older hub)."""

    @property
    def next_page_tokens(self) -> dict[str, str]:
        """Per spoke, the token for its next page (only spokes with more agents)."""
        return {s: p.next_page_token for s, p in self.pages.items() if p.next_page_token}
