"""The checks that make a signed reply believable, shared by every caller of a hub or a spoke
(``Session``, and the bench's direct spoke client): signed by a trusted key of the expected
role (and by the expected peer), by its own responder, answering exactly the command sent
(``command_id`` and ``request_digest`` over the signed bytes), carrying the promised result;
and an agent in it on the spoke that signed it, the one asked for."""

from __future__ import annotations

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2
from hubspoke.trust import Role, TrustStore

from . import _rpc
from ._errors import CallError
from ._types import Agent

__all__ = ["check_reply", "checked_agent"]


def check_reply(
    command_id: str,
    signed_payload: bytes,
    reply_env: command_pb2.SignedEnvelope,
    trust: TrustStore,
    role: Role,
    signer: str | None,
    result: _rpc.Result,
) -> tuple[str, command_pb2.Reply]:
    """The reply's signer and the reply, once it is proven to answer the command whose id is
    ``command_id`` and whose signed payload is ``signed_payload``; CallError (REPLY_INVALID)
    otherwise."""
    try:
        verified = envelope.verify(
            reply_env, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=trust, roles=(role,)
        )
        reply = commands.parse_reply(verified.payload)
    except errors.CommandError as exc:
        raise CallError.invalid_reply(f"reply failed verification: {exc.message}") from exc
    peer = verified.signer.peer
    if signer is not None and peer != signer:
        raise CallError.invalid_reply(f"reply is signed by {peer}, not by {signer}")
    if reply.responder != peer:
        raise CallError.invalid_reply("reply's responder is not its signer")
    if reply.command_id != command_id or reply.request_digest != commands.digest(signed_payload):
        raise CallError.invalid_reply("reply does not answer the command sent")
    if reply.WhichOneof("result") != result:
        raise CallError.invalid_reply(f"reply carries no {result}")
    return peer, reply


def checked_agent(agent: agent_pb2.Agent, signer: str, agent_id: str | None) -> Agent:
    """``agent`` as the client's type, once it is on the spoke that signed it (and is
    ``agent_id``, when one was asked for)."""
    if agent.spoke != signer:
        raise CallError.invalid_reply(
            f"spoke {signer} answered for agent {agent.agent_id!r} of spoke {agent.spoke!r}"
        )
    if agent_id is not None and agent.agent_id != agent_id:
        raise CallError.invalid_reply(f"asked for agent {agent_id}, got {agent.agent_id!r}")
    if agent.name and agent.name != f"spokes/{signer}/agents/{agent.agent_id}":
        raise CallError.invalid_reply(f"agent {agent.agent_id!r} is named {agent.name!r}")
    return Agent.from_proto(agent)
