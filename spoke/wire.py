"""Domain records to protobuf messages (the service layer's translation, one direction)."""

from __future__ import annotations

import json
import time

from google.protobuf import timestamp_pb2

from hubspoke.gen.federation.v1 import agent_pb2

from . import wire_modes
from .model import AgentEvent, AgentRecord, AgentState

_STATES = {state: agent_pb2.Agent.State.Value(f"STATE_{state.value}") for state in AgentState}
"""Each state's wire number, looked up once (issue 13: a status's conversion is per request)."""


def timestamp_now() -> timestamp_pb2.Timestamp:
    """Now, to the microsecond, as ``commands.to_timestamp(commands.now())`` gives it, without
    the datetime round trip (issue 13: every reply's issue_time)."""
    ns = time.time_ns()
    return timestamp_pb2.Timestamp(
        seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000 // 1000 * 1000
    )


def agent_name(spoke: str, agent_id: str) -> str:
    return f"spokes/{spoke}/agents/{agent_id}"


def to_agent(spoke: str, rec: AgentRecord) -> agent_pb2.Agent:
    agent = agent_pb2.Agent(
        name=f"spokes/{spoke}/agents/{rec.agent_id}",
        agent_id=rec.agent_id,
        spoke=spoke,
        profile=rec.profile,
        state=_STATES[rec.state],
        priority=rec.priority,
        issuer=rec.issuer,
        task=rec.task,
        reason=rec.reason,
        stdout_tail=rec.stdout_tail,
        stderr_tail=rec.stderr_tail,
        attempt=rec.attempt,
        max_attempts=rec.max_attempts,
        progress_percent=rec.progress_percent,
        progress_message=rec.progress_message,
    )
    if rec.labels:
        agent.labels.update(rec.labels)
    timeout = agent.timeout  # present even when zero, as a Duration(0) always was
    timeout.SetInParent()
    timeout.seconds, timeout.nanos = rec.timeout_ms // 1000, (rec.timeout_ms % 1000) * 1_000_000
    wire_modes.add_mode(agent, rec)
    if rec.create_ms is not None:
        agent.create_time.FromMilliseconds(rec.create_ms)
    if rec.start_ms is not None:
        agent.start_time.FromMilliseconds(rec.start_ms)
    if rec.state.final and rec.end_ms is not None:
        agent.end_time.FromMilliseconds(rec.end_ms)
    if rec.exit_code is not None:
        agent.exit_code = rec.exit_code
    agent.inputs = rec.inputs
    if rec.receipt_json:
        agent.receipt.CopyFrom(to_receipt(rec))
    if rec.state == AgentState.NEEDS_VERIFICATION and rec.verify_deadline_ms:
        agent.verify_deadline.FromMilliseconds(rec.verify_deadline_ms)
    if rec.approvals_required:  # approvals (spoke/approvals.py)
        agent.approvals_required = rec.approvals_required
        agent.approvers.extend(rec.approvers)
        agent.approved_by.extend(rec.approved_by)
        if rec.state == AgentState.AWAITING_APPROVAL:
            agent.approval_deadline.FromMilliseconds(rec.approval_deadline_ms)
    if rec.expire_ms and (rec.start_deadline_ms or rec.replays):
        agent.start_deadline.FromMilliseconds(rec.expire_ms)  # a replay's own, if replayed
    agent.dedupe_key = rec.dedupe_key
    return agent


def to_receipt(rec: AgentRecord) -> agent_pb2.Receipt:
    """The stored receipt (spoke/outcome.py), with any verdicts ``verify`` recorded."""
    r = json.loads(rec.receipt_json)
    items = []
    for v in r["verifications"]:
        item = agent_pb2.VerificationItem(**v)
        if v["name"] in rec.verdicts:
            item.status = rec.verdicts[v["name"]]
            item.verified_by = rec.verified_by.get(v["name"], "")
        items.append(item)
    return agent_pb2.Receipt(
        status=r["status"],
        summary=r["summary"],
        artifacts=r["artifacts"],
        verifications=items,
        json=r["json"],
        blockers=r.get("blockers", []),
        error=r.get("error", ""),
        artifact_details=[agent_pb2.Artifact(**a) for a in r.get("artifact_details", [])],
    )


_KINDS = {
    "state": agent_pb2.AgentEvent.Kind.KIND_STATE,
    "progress": agent_pb2.AgentEvent.Kind.KIND_PROGRESS,
    "stdout": agent_pb2.AgentEvent.Kind.KIND_STDOUT,
    "stderr": agent_pb2.AgentEvent.Kind.KIND_STDERR,
    "heartbeat": agent_pb2.AgentEvent.Kind.KIND_HEARTBEAT,
    "dropped": agent_pb2.AgentEvent.Kind.KIND_DROPPED,
    "input": agent_pb2.AgentEvent.Kind.KIND_INPUT,
    "approval": agent_pb2.AgentEvent.Kind.KIND_APPROVAL,
}


def to_event(agent_id: str, ev: AgentEvent) -> agent_pb2.AgentEvent:
    out = agent_pb2.AgentEvent(
        agent_id=agent_id,
        sequence=ev.seq,
        kind=_KINDS.get(ev.kind, agent_pb2.AgentEvent.Kind.KIND_UNSPECIFIED),
        reason=ev.reason,
        data=ev.data,
        approver=ev.approver,
    )
    out.event_time.FromMilliseconds(ev.time_ms)
    if ev.kind == "input":
        out.sender, out.input_sequence = ev.sender, ev.input_seq
    if ev.kind == "state" and ev.state:
        out.state = agent_pb2.Agent.State.Value(f"STATE_{ev.state}")
    if ev.kind == "progress":
        pct, _, msg = ev.data.partition(" ")
        out.progress_percent = int(pct) if pct.isdigit() else 0
        out.data = msg
    return out
