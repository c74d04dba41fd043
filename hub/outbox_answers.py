"""What the hub answers, signed by itself, for agents it holds in its outbox.

A spoke signs everything about the agents it holds; for a spawn the hub still holds (or that
ended without ever reaching its spoke) the hub is the only one who knows, so it answers and
signs: PENDING_DELIVERY, EXPIRED (reason UNDELIVERED) or KILLED (reason
KILLED_BEFORE_DELIVERY). A kill held for an unreachable spoke answers with ``kill_pending``
set and the state left unspecified (the hub does not know it). Clients accept an agent signed
by their hub only in these cases (docs/protocol.md, "Store and forward").
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from hubspoke import commands, envelope
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2
from hubspoke.keys import SigningKey

from .outbox import Ended, Held
from .relay import Inbound

__all__ = ["ended_agent", "held_kill_agent", "pending_agent", "signed_agent_reply"]

State = agent_pb2.Agent.State


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    return commands.to_timestamp(commands.from_epoch_ms(ms))


def _name(spoke: str, agent: str) -> str:
    return f"spokes/{spoke}/agents/{agent}"


def pending_agent(held: Held) -> agent_pb2.Agent:
    """A spawn the hub holds: PENDING_DELIVERY, with its acceptance and start deadline."""
    return agent_pb2.Agent(
        name=_name(held.spoke, held.agent),
        agent_id=held.agent,
        spoke=held.spoke,
        state=State.STATE_PENDING_DELIVERY,
        issuer=held.principal,
        profile=held.profile,
        task=held.task,
        create_time=_ts(held.accepted_ms),
        start_deadline=_ts(held.deadline_ms),
        reason=held.last_error or "SPOKE_UNREACHABLE",
    )


def ended_agent(ended: Ended) -> agent_pb2.Agent:
    """A spawn that ended in the outbox: EXPIRED/UNDELIVERED or KILLED/KILLED_BEFORE_DELIVERY."""
    return agent_pb2.Agent(
        name=_name(ended.spoke, ended.agent),
        agent_id=ended.agent,
        spoke=ended.spoke,
        state=State.Value(f"STATE_{ended.state}"),
        issuer=ended.principal,
        profile=ended.profile,
        task=ended.task,
        create_time=_ts(ended.accepted_ms),
        start_deadline=_ts(ended.deadline_ms),
        end_time=_ts(ended.ended_ms),
        reason=ended.reason,
    )


def held_kill_agent(held: Held) -> agent_pb2.Agent:
    """An agent on an unreachable spoke whose kill the hub holds."""
    return agent_pb2.Agent(
        name=_name(held.spoke, held.agent),
        agent_id=held.agent,
        spoke=held.spoke,
        kill_pending=True,
        reason="KILL_PENDING_DELIVERY",
    )


def signed_agent_reply(
    inbound: Inbound, agent: agent_pb2.Agent, hub: str, key: SigningKey
) -> tuple[command_pb2.SignedEnvelope, command_pb2.Reply]:
    """The hub's signed Reply carrying ``agent``, bound to ``inbound`` like a spoke's."""
    reply = command_pb2.Reply(
        command_id=inbound.command.command_id,
        responder=hub,
        request_digest=inbound.digest,
        issue_time=commands.to_timestamp(commands.now()),
        agent=agent,
    )
    signed = envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)
    return signed, reply
