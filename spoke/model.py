"""The spoke's domain model: agent states, records and spawn requests (no Redis, no proto)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class AgentState(StrEnum):
    """Persisted agent states; transitions are enforced by spoke/queue.py."""

    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    TIMED_OUT = "TIMED_OUT"
    DEAD_LETTERED = "DEAD_LETTERED"
    RETRYING = "RETRYING"
    NEEDS_INPUT = "NEEDS_INPUT"
    """The receipt said ``blocked``: the agent waits for someone's answer (or a kill)."""
    NEEDS_VERIFICATION = "NEEDS_VERIFICATION"
    """The receipt said ``completed`` with items not passed: they wait for ``verify`` until
    the record's ``verify_deadline_ms``, then the agent FAILED (VERIFICATION_TIMEOUT)."""
    EXPIRED = "EXPIRED"
    """Final: not started by its start deadline (reason NOT_STARTED); it never ran."""
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    """A policy rule asks for approvals: held, with no job, until enough approvers sign
    (then QUEUED), one rejects or the approval window closes (REJECTED; spoke/approvals.py)."""
    REJECTED = "REJECTED"
    """Final: rejected by an approver, or not approved in its window; it never ran."""
    SHADOWED = "SHADOWED"
    """Final: a shadow-mode worker took it and started nothing (reason SHADOW_MODE); the
    record's ``shadow_run`` says what would have run (spoke/modes.py)."""

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {
        AgentState.SUCCEEDED,
        AgentState.FAILED,
        AgentState.KILLED,
        AgentState.TIMED_OUT,
        AgentState.DEAD_LETTERED,
        AgentState.EXPIRED,
        AgentState.REJECTED,  # approvals
        AgentState.SHADOWED,
    }
)

NOT_STARTED = "NOT_STARTED"
"""The reason of an agent that waited in the queue past its start deadline (EXPIRED)."""

_Q, _S, _R = AgentState.QUEUED, AgentState.STARTING, AgentState.RUNNING
_RETRY, _NI, _NV = AgentState.RETRYING, AgentState.NEEDS_INPUT, AgentState.NEEDS_VERIFICATION
_F, _T, _D = AgentState.FAILED, AgentState.TIMED_OUT, AgentState.DEAD_LETTERED

EDGES: Mapping[AgentState, frozenset[AgentState]] = {
    _Q: frozenset({_F, _T, _D, _NI, AgentState.AWAITING_APPROVAL}),  # replay; approvals release
    _S: frozenset({_Q, _RETRY}),
    _R: frozenset({_S}),
    _RETRY: frozenset({_S, _R}),  # a failed attempt, or a lost one
    AgentState.SUCCEEDED: frozenset({_R, _NV}),
    _F: frozenset({_Q, _RETRY, _S, _R, _NV}),
    AgentState.KILLED: frozenset({_Q, _RETRY, _R, _NI, _NV, AgentState.AWAITING_APPROVAL}),
    _T: frozenset({_R}),
    _D: frozenset({_R}),
    _NI: frozenset({_R}),
    _NV: frozenset({_R}),
    AgentState.EXPIRED: frozenset({_Q}),  # never started by its start deadline
    AgentState.AWAITING_APPROVAL: frozenset({_Q}),  # held for approvals as it is stored
    AgentState.REJECTED: frozenset({AgentState.AWAITING_APPROVAL}),  # rejected, or expired
    AgentState.SHADOWED: frozenset({_S}),  # shadow mode: taken, never started
}
"""Every state change an agent may make: ``EDGES[to]`` are the states it may come from.
``Records.transition`` refuses any other (spoke/kills.py's script makes the kill edges)."""


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    """A verified, validated spawn, ready to be stored."""

    agent_id: str
    issuer: str
    profile: str
    task: str
    priority: int
    timeout_ms: int
    max_attempts: int
    labels: Mapping[str, str]
    digest: str
    """Hex SHA-256 over the spawn's meaning (not its nonce or times): reuse detection."""
    expire_ms: int
    """The start deadline (acceptance + start_within): not started by then, it never starts."""
    envelope: bytes
    """The client's signed envelope as received, kept for audit."""
    relay: bytes = b""
    """The hub's signed relay envelope as received, if it came through a hub."""
    delay_ms: int = 0
    """Do not start before this many ms after it is stored."""
    backoff_ms: int = 1000
    """Base of the exponential retry backoff."""
    accept_ms: int = 0
    """The acceptance time (the hub's, or the spoke's receive time); 0: when stored."""
    approvals_required: int = 0
    """Approvals its policy rule asks for (0: none): stored AWAITING_APPROVAL, no job."""
    approvers: tuple[str, ...] = ()
    """Who may approve or reject it (the rule's approvers)."""
    approval_deadline_ms: int = 0
    """When it ends REJECTED (APPROVAL_EXPIRED) unless approved: acceptance + window."""
    dedupe_key: str = ""
    """The spawn's dedupe key (its own or derived, hubspoke.dedupe); "" for none."""


def _s(v: bytes | None) -> str:
    """A stored text field ("" when absent)."""
    return v.decode("utf-8", "replace") if v is not None else ""


def _i(v: bytes | None, default: int = 0) -> int:
    """A stored integer field (``default`` when absent or empty)."""
    return int(v) if v else default


def _oi(v: bytes | None) -> int | None:
    """A stored integer field that may be unset (absent or empty: None)."""
    return int(v) if v else None


_EMPTY_JSON = (b"", b"{}", b"[]")


def _labels(v: bytes | None) -> dict[str, str]:
    """The labels' JSON object; an absent or empty field is no labels."""
    if v is None or v == b"" or v == b"{}":
        return {}
    value: dict[str, str] = json.loads(v.decode("utf-8", "replace"))
    return value


def _names(v: bytes | None) -> tuple[str, ...]:
    """A JSON list of names (pending items, approvers); absent or empty: ()."""
    return tuple(json.loads(v.decode("utf-8", "replace"))) if v and v != b"[]" else ()


def _map(v: bytes | None) -> dict[str, str]:
    """A JSON object of strings (Lua's cjson writes an empty one as ``{}`` or ``[]``)."""
    if v is None or v in _EMPTY_JSON:
        return {}
    value = json.loads(v.decode("utf-8", "replace"))
    return {str(k): str(x) for k, x in value.items()} if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as stored in its Redis hash."""

    agent_id: str
    state: AgentState
    profile: str
    task: str
    issuer: str
    priority: int
    digest: str
    create_ms: int
    timeout_ms: int
    max_attempts: int
    attempt: int = 0
    reason: str = ""
    start_ms: int | None = None
    end_ms: int | None = None
    exit_code: int | None = None
    expire_ms: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    stdout_tail: str = ""
    stderr_tail: str = ""
    progress_percent: int = -1
    progress_message: str = ""
    receipt_json: str = ""
    pid: int | None = None
    pgid: int | None = None
    start_ticks: int | None = None
    worker: str = ""
    kill_requested: str = ""
    seq: int = 0
    job_id: str = ""
    backoff_ms: int = 1000
    replays: int = 0
    not_before_ms: int = 0
    replay_command: str = ""
    boot_id: str = ""
    """The host boot where pid/pgid were recorded; they mean nothing on another."""
    spoked_pid: int | None = None
    spoked_ticks: int | None = None
    mode: str = ""
    """The run mode its last attempt was taken in (live, synthetic, shadow); "" before."""
    shadow_run: str = ""
    """SHADOWED: what would have run, as JSON (spoke/modes.py ShadowPlan)."""
    verify_deadline_ms: int = 0
    """While NEEDS_VERIFICATION: when it fails unless every pending item is settled."""
    pending: tuple[str, ...] = ()
    """The names of the receipt's verification items not passed (NEEDS_VERIFICATION)."""
    verdicts: Mapping[str, str] = field(default_factory=dict)
    """Settled verification items: name → ``passed`` or ``failed`` (``hubctl verify``)."""
    verified_by: Mapping[str, str] = field(default_factory=dict)
    """Who settled each of ``verdicts``."""
    start_deadline_ms: int = 0
    """The spawn's start deadline as accepted; 0 for a record stored before start deadlines.
    Unlike ``expire_ms`` (which a replay moves to its own deadline) it never changes."""
    inputs: int = 0
    """How many signed messages ``hubctl send`` kept for it (spoke/inbox.py)."""
    approvals_required: int = 0
    """Distinct approvals its policy rule asked for before it may be queued; 0: none."""
    approvers: tuple[str, ...] = ()
    """Who may approve or reject it, as the policy named them when it was stored."""
    approved_by: tuple[str, ...] = ()
    """The approvers whose signed approvals the spoke verified and kept, in order."""
    approval_deadline_ms: int = 0
    """While AWAITING_APPROVAL: when it ends REJECTED (APPROVAL_EXPIRED)."""
    rejected_by: str = ""
    """REJECTED by an approver: who (the reason text is in the REJECTED event)."""
    dedupe_key: str = ""
    """The spawn's dedupe key; "" for none (spoke/dedupe.py)."""

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> AgentRecord:
        # One dict lookup per field with bytes keys, and JSON parsed only where a field holds
        # more than its empty value: a list page converts every record it shows (issue 13).
        g = raw.get
        return cls(
            agent_id=_s(g(b"agent_id")),
            state=AgentState(_s(g(b"state"))),
            profile=_s(g(b"profile")),
            task=_s(g(b"task")),
            issuer=_s(g(b"issuer")),
            priority=_i(g(b"priority")),
            digest=_s(g(b"digest")),
            create_ms=_i(g(b"create_ms")),
            timeout_ms=_i(g(b"timeout_ms")),
            max_attempts=_i(g(b"max_attempts"), 1),
            attempt=_i(g(b"attempt")),
            reason=_s(g(b"reason")),
            start_ms=_oi(g(b"start_ms")),
            end_ms=_oi(g(b"end_ms")),
            exit_code=_oi(g(b"exit_code")),
            expire_ms=_i(g(b"expire_ms")),
            labels=_labels(g(b"labels")),
            stdout_tail=_s(g(b"stdout_tail")),
            stderr_tail=_s(g(b"stderr_tail")),
            progress_percent=_i(g(b"progress_percent"), -1),
            progress_message=_s(g(b"progress_message")),
            receipt_json=_s(g(b"receipt")),
            pid=_oi(g(b"pid")),
            pgid=_oi(g(b"pgid")),
            start_ticks=_oi(g(b"start_ticks")),
            worker=_s(g(b"worker")),
            mode=_s(g(b"mode")),
            shadow_run=_s(g(b"shadow_run")),
            kill_requested=_s(g(b"kill_requested")),
            seq=_i(g(b"seq")),
            job_id=_s(g(b"job_id")),
            backoff_ms=_i(g(b"backoff_ms"), 1000),
            replays=_i(g(b"replays")),
            not_before_ms=_i(g(b"not_before_ms")),
            replay_command=_s(g(b"replay_command")),
            boot_id=_s(g(b"boot_id")),
            spoked_pid=_oi(g(b"spoked_pid")),
            spoked_ticks=_oi(g(b"spoked_ticks")),
            verify_deadline_ms=_i(g(b"verify_deadline_ms")),
            pending=_names(g(b"pending")),
            verdicts=_map(g(b"verdicts")),
            verified_by=_map(g(b"verified_by")),
            start_deadline_ms=_i(g(b"start_deadline_ms")),
            inputs=_i(g(b"inputs")),
            approvals_required=_i(g(b"approvals_required")),
            approvers=_names(g(b"approvers")),
            approved_by=_names(g(b"approved_by")),
            approval_deadline_ms=_i(g(b"approval_deadline_ms")),
            rejected_by=_s(g(b"rejected_by")),
            dedupe_key=_s(g(b"dedupe_key")),
        )


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One entry of an agent's event stream."""

    seq: int
    kind: str
    """state, progress, stdout or stderr."""
    time_ms: int
    state: str = ""
    reason: str = ""
    data: str = ""
    sender: str = ""
    """For an ``input`` event: who signed the message (its text is ``data``)."""
    input_seq: int = 0
    """For an ``input`` event: the message's number in the agent's inbox, from 1."""
    approver: str = ""
    """For an ``approval`` event and the REJECTED state event of a rejection."""
