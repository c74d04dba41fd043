"""Approvals: a spawn a policy rule asks approvals for is held at the spoke until released.

The spoke that holds the agent is the authority (docs/security.md, Approvals), so a call
straight to it cannot skip them:

* at the spawn, ``requirement`` asks the policy (shared/policy.py ``approval_rule``) how
  many approvals, from whom, and until when; the record is stored with them and ``hold``
  moves it QUEUED → AWAITING_APPROVAL (reason APPROVAL_REQUIRED) before any job exists;
* each ``approve``/``reject`` arrives as a signed command the spoke's verifier checked;
  ``check_approver`` refuses the agent's owner (the requester) and anyone not among the
  approvers stored with the agent (PERMISSION_DENIED); the approval's signed envelope is
  kept on the record (one field per approver, so distinct approvers count once and the
  copies are bounded by the rule's approvers, at most ``policy.MAX_APPROVERS``);
* with as many distinct approvals as required the agent is released (AWAITING_APPROVAL →
  QUEUED, reason APPROVED) and its job queued; one rejection ends it REJECTED (reason
  REJECTED_BY_APPROVER; who and why are on the record and in its ``approval`` event);
* the sweeper ends agents whose window closed REJECTED (APPROVAL_EXPIRED), see
  ``expire_overdue``.

A crash between recording the last approval and the release leaves the agent waiting with
enough approvals: a retry of any approval releases it.

Held agents are in no queue, so the queue's caps do not count them; ``awaiting_of`` counts a
principal's, for the spoke's ``max_awaiting_per_principal`` (checked before a spawn that
needs approvals is stored). The count is a sorted set of ``issuer:agent_id`` members added
when an agent is held, each checked against its record when counted (members of agents that
no longer wait, however they left, are dropped then).

Before each start the worker checks the kept approvals again (``verify_kept``, with the trust
store as it is then, like the spawn itself: spoke/reverify.py): each must still verify, be
signed by the approver it is kept for, one of the agent's approvers and not its owner, and
name this agent; fewer valid ones than required and the agent ends FAILED ``TAMPERED``. So
writing ``approved_by`` into the spoke's Redis does not release an agent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

from google.protobuf.message import DecodeError

from hubspoke import commands, envelope, errors
from hubspoke.approval_text import ApprovalRequiredError
from hubspoke.approval_text import check_reason as check_reason  # the service checks with it
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.policy import Policy
from hubspoke.policy import Request as PolicyRequest
from hubspoke.trust import Role, TrustStore

from . import job_pending
from .backend import AgentMissingError, TransitionError, backend, now_ms
from .jobs import Jobs
from .model import AgentRecord, AgentState, SpawnRequest
from .records import EVENTS_MAXLEN, Records
from .reverify import TamperedError

APPROVAL_REQUIRED: Final = "APPROVAL_REQUIRED"
APPROVED: Final = "APPROVED"
REJECTED_BY_APPROVER: Final = "REJECTED_BY_APPROVER"
APPROVAL_EXPIRED: Final = "APPROVAL_EXPIRED"

_RECORD = """
-- KEYS: agent, events. ARGV: principal, text, now_ms, maxlen, envelope, verdict.
-- Records one approver's signed approval (verdict "approve": once per approver) or
-- rejection, with its event, while the agent is AWAITING_APPROVAL. "counted": this
-- approver's approval (or the rejection that ended it) is already recorded: a retry.
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
local list = cjson.decode(redis.call('HGET', KEYS[1], 'approved_by') or '[]')
for _, p in ipairs(list) do
  if p == ARGV[1] and ARGV[6] == 'approve' then return {'counted', tostring(#list)} end
end
if cur == 'REJECTED' and ARGV[6] == 'reject'
    and redis.call('HGET', KEYS[1], 'rejected_by') == ARGV[1] then
  return {'counted', tostring(#list)}
end
if cur ~= 'AWAITING_APPROVAL' then return {'illegal', cur} end
local data = ARGV[2]
if ARGV[6] == 'approve' then
  table.insert(list, ARGV[1])
  redis.call('HSET', KEYS[1], 'approved_by', cjson.encode(list), 'approval:' .. ARGV[1], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'rejected_by', ARGV[1], 'rejection', ARGV[5],
    'rejection_reason', ARGV[2])
  data = 'rejected: ' .. ARGV[2]
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0',
  'kind', 'approval', 'approver', ARGV[1], 'data', data, 'time', ARGV[3])
return {'recorded', tostring(#list)}
"""


def requirement(
    policy: Policy, req: PolicyRequest, default_window_s: float, accept_ms: int
) -> tuple[int, tuple[str, ...], int]:
    """For an allowed spawn: (approvals, approvers, approval deadline in ms), or (0, (), 0)
    when no rule that allows it asks for approvals. The window is the rule's
    ``approval_window_seconds``, else the spoke's ``approval_window_s``, from acceptance."""
    rule = policy.approval_rule(req)
    if rule is None:
        return 0, (), 0
    window_s = rule.approval_window_s or default_window_s
    return rule.approvals, tuple(sorted(rule.approvers)), accept_ms + int(window_s * 1000)


def check_replay(policy: Policy, req: PolicyRequest, rec: AgentRecord, command_id: str) -> None:
    """A replay runs the agent again without asking anyone: refused (FAILED_PRECONDITION
    APPROVAL_REQUIRED) when its run needed approvals or its profile needs them now for
    ``req`` (the replay as a spawn). A retry of a replay that happened is let through."""
    if rec.replay_command == command_id:
        return
    if rec.approvals_required or policy.approval_rule(req) is not None:
        raise ApprovalRequiredError(
            f"agent {rec.agent_id} runs only with approvals: it cannot be replayed; "
            "spawn it again and it waits for them",
            agent=rec.agent_id,
        )


def held(rec: AgentRecord) -> bool:
    """Whether the record still waits for approvals (it must have no job)."""
    return rec.approvals_required > len(rec.approved_by)


def check_approver(rec: AgentRecord, principal: str, verb: str) -> None:
    """PERMISSION_DENIED unless ``principal`` is one of the agent's approvers and not its
    owner (the requester)."""
    if principal == rec.issuer:
        raise errors.KeyNotAuthorizedError(
            f"{principal} requested agent {rec.agent_id} and cannot {verb} it: "
            "approvals come from other principals",
            verb=verb,
        )
    if principal not in rec.approvers:
        raise errors.KeyNotAuthorizedError(
            f"{principal} is not an approver of agent {rec.agent_id} "
            f"(approvers: {', '.join(rec.approvers) or 'none'})",
            verb=verb,
        )


def awaiting_key(records: Records) -> str:
    """The sorted set of held agents: ``issuer:agent_id`` members, every score 0 (read by
    lexical range, as the waiting set is)."""
    return f"{records.keys.prefix}:awaiting"


@backend
async def awaiting_of(records: Records, issuer: str) -> int:
    """How many of ``issuer``'s agents wait for approvals on this spoke (stale members
    dropped)."""
    key = awaiting_key(records)
    members: list[bytes] = await records.redis.zrangebylex(key, f"[{issuer}:", f"({issuer};")  # type: ignore[assignment]  # bytes: decode_responses is off
    if not members:
        return 0
    pipe = records.redis.pipeline(transaction=False)
    for member in members:
        pipe.hget(records.keys.agent(member.decode().split(":", 1)[1]), "state")
    states = await pipe.execute()
    stale = [m for m, s in zip(members, states, strict=True) if s != b"AWAITING_APPROVAL"]
    if stale:
        await records.redis.zrem(key, *stale)
    return len(members) - len(stale)


async def check_quota(records: Records, req: SpawnRequest, limit: int) -> None:
    """RESOURCE_EXHAUSTED (QUOTA_EXCEEDED) when a new spawn that needs approvals would give
    its issuer more than ``limit`` held agents (a retry of a stored spawn passes)."""
    if not req.approvals_required or await records.get_or_none(req.agent_id) is not None:
        return
    held_now = await awaiting_of(records, req.issuer)
    if held_now >= limit:
        raise errors.QuotaExceededError(
            f"{req.issuer} has {held_now} agents waiting for approvals on this spoke, "
            "its limit (max_awaiting_per_principal)",
            limit="max_awaiting_per_principal",
            max=str(limit),
        )


class Approvals:
    """Holding, approving, rejecting and expiring agents that wait for approvals."""

    def __init__(self, records: Records, jobs: Jobs) -> None:
        self.records = records
        self.jobs = jobs
        self._record = records.redis.register_script(_RECORD)

    async def hold(self, rec: AgentRecord) -> AgentRecord:
        """QUEUED (just stored, no job) → AWAITING_APPROVAL; a record already held is
        returned as it is."""
        with contextlib.suppress(TransitionError):
            await self.records.transition(
                rec.agent_id, [AgentState.QUEUED], AgentState.AWAITING_APPROVAL, APPROVAL_REQUIRED
            )
        held_rec = await self.records.get(rec.agent_id)
        if held_rec.state is AgentState.AWAITING_APPROVAL:
            member = f"{held_rec.issuer}:{held_rec.agent_id}"
            await self._count(member)
        return held_rec

    @backend
    async def _count(self, member: str) -> None:
        await self.records.redis.zadd(awaiting_key(self.records), {member: 0})

    async def approve(
        self, rec: AgentRecord, principal: str, reason: str, envelope: bytes
    ) -> AgentRecord:
        """Record ``principal``'s approval (once), and release the agent once it has enough.
        Raises TransitionError when it no longer waits (and this approver never counted)."""
        _, count = await self._apply(rec.agent_id, principal, reason, envelope, "approve")
        if count >= rec.approvals_required:
            await self._release(rec.agent_id)
        return await self.records.get(rec.agent_id)

    async def reject(
        self, rec: AgentRecord, principal: str, reason: str, envelope: bytes
    ) -> AgentRecord:
        """End the agent REJECTED (REJECTED_BY_APPROVER), the rejection kept on its record."""
        status, _ = await self._apply(rec.agent_id, principal, reason, envelope, "reject")
        if status == "counted":  # this approver's rejection ended it already: a retry
            return await self.records.get(rec.agent_id)
        await self.records.transition(
            rec.agent_id,
            [AgentState.AWAITING_APPROVAL],
            AgentState.REJECTED,
            REJECTED_BY_APPROVER,
        )
        return await self.records.get(rec.agent_id)

    @backend
    async def _apply(
        self, agent_id: str, principal: str, text: str, envelope: bytes, verdict: str
    ) -> tuple[str, int]:
        keys = [self.records.keys.agent(agent_id), self.records.keys.events(agent_id)]
        args: list[Any] = [principal, text, now_ms(), EVENTS_MAXLEN, envelope, verdict]
        status, detail = await self._record(keys=keys, args=args)
        if status == b"missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if status == b"illegal":
            raise TransitionError(agent_id, detail.decode())
        return status.decode(), int(detail)

    async def _release(self, agent_id: str) -> None:
        redis, keys = self.records.redis, self.records.keys
        async with job_pending.two_step(redis, keys, agent_id):  # record, then job
            try:
                await self.records.transition(
                    agent_id, [AgentState.AWAITING_APPROVAL], AgentState.QUEUED, APPROVED
                )
            except TransitionError:
                return  # released (or ended) by another call meanwhile
            await self.jobs.enqueue(await self.records.get(agent_id))


async def _scan_held(
    records: Records, *fields: str, batch: int = 500
) -> AsyncIterator[list[tuple[str, list[bytes | None]]]]:
    """The agents of the held set (``awaiting_key``) with some of their record's fields, in
    pipelined batches (two round trips per ``batch``)."""
    offset = 0
    while True:
        members: list[bytes] = await records.redis.zrange(  # type: ignore[assignment]  # bytes
            awaiting_key(records), offset, offset + batch - 1
        )
        if not members:
            return
        offset += len(members)
        ids = [m.decode().split(":", 1)[-1] for m in members]
        pipe = records.redis.pipeline(transaction=False)
        for agent_id in ids:
            pipe.hmget(records.keys.agent(agent_id), *fields)
        yield list(zip(ids, await pipe.execute(), strict=True))


async def expire_overdue(records: Records) -> int:
    """AWAITING_APPROVAL agents past their approval deadline → REJECTED
    (APPROVAL_EXPIRED); one pass over the held agents' set, not every record (the sweeper,
    every ``sweep_interval_s``)."""
    now = now_ms()
    due: list[str] = []
    async for rows in _scan_held(records, "state", "approval_deadline_ms"):
        for agent_id, (state, deadline) in rows:
            if state == b"AWAITING_APPROVAL" and deadline and 0 < int(deadline) < now:
                due.append(agent_id)
    expired = 0
    for agent_id in due:
        with contextlib.suppress(TransitionError, AgentMissingError):  # approved meanwhile
            await records.transition(
                agent_id,
                [AgentState.AWAITING_APPROVAL],
                AgentState.REJECTED,
                APPROVAL_EXPIRED,
            )
            expired += 1
    return expired


@backend
async def kept_approvals(records: Records, rec: AgentRecord) -> dict[str, bytes]:
    """The signed approvals kept with ``rec``, by approver (those ``approved_by`` names)."""
    if not rec.approved_by:
        return {}
    fields = [f"approval:{name}" for name in rec.approved_by]
    rows: list[bytes | None] = await records.redis.hmget(records.keys.agent(rec.agent_id), fields)  # type: ignore[assignment]  # bytes: decode_responses is off
    return {name: raw for name, raw in zip(rec.approved_by, rows, strict=True) if raw}


def verify_kept(rec: AgentRecord, kept: dict[str, bytes], *, spoke: str, trust: TrustStore) -> None:
    """TamperedError("approvals") unless ``rec`` has as many valid kept approvals as it
    requires (module docstring); nothing to check for an agent that required none."""
    if not rec.approvals_required:
        return
    names = {rec.agent_id, f"spokes/{spoke}/agents/{rec.agent_id}"}
    valid: set[str] = set()
    for name, raw in kept.items():
        try:
            verified = envelope.verify(
                command_pb2.SignedEnvelope.FromString(raw),
                payload_type=envelope.PAYLOAD_TYPE_COMMAND,
                trust=trust,
                roles={Role.CLIENT},
            )
            cmd = commands.parse_command(verified.payload)
        except (errors.CommandError, DecodeError):
            continue
        if (
            cmd.WhichOneof("body") == "approve_agent"
            and cmd.approve_agent.agent in names
            and cmd.issuer == verified.peer == name
            and name in rec.approvers
            and name != rec.issuer
        ):
            valid.add(name)
    if len(valid) < rec.approvals_required:
        raise TamperedError("approvals")
