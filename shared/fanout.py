"""The hub's signed account of a fan-out, and the client's check of it.

ListAgents addressed to the hub asks every spoke the caller may list. Each spoke's reply is
signed by that spoke, but which spokes did *not* answer is the hub's own statement, and the
``unreachable_spokes`` field beside the replies is not signed. So the hub also signs a Reply
of its own (responder: the hub; bound to the command by command_id and request_digest) whose
result is a ``FanOut`` naming the spokes that answered and the spokes that did not.

A client checks it with :func:`verify_fan_out`: signed by the hub it dialled, answering the
command it sent, naming exactly the signers of the spoke replies it received and exactly the
unreachable spokes it was told of. Dropping a spoke's reply, marking a spoke unreachable,
or adding one on the way is then detected. Both sides live here so they cannot drift.

Spokes whose replies did not fit in the hub's response beside the others (each page fits
one message, not all of them together) are named in ``omitted_spokes``, signed likewise; a
client lists each of them alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import grpc

from . import commands, envelope, errors
from .gen.federation.v1 import command_pb2
from .keys import SigningKey
from .trust import Role, TrustStore

__all__ = ["FanOutInvalidError", "sign_fan_out", "verify_fan_out"]


class FanOutInvalidError(errors.CommandError):
    """A hub's fan-out account is missing, not the hub's, or disagrees with the replies."""

    code = grpc.StatusCode.INTERNAL
    reason = "FAN_OUT_INVALID"


def sign_fan_out(
    *,
    hub: str,
    key: SigningKey,
    command_id: str,
    request_digest: bytes,
    answered: Iterable[str],
    unreachable: Iterable[str],
    omitted: Iterable[str] = (),
    reasons: Mapping[str, str] | None = None,
) -> command_pb2.SignedEnvelope:
    """The hub's signed Reply whose result is the FanOut of one command (lists sorted).

    ``reasons``: why each unreachable spoke gave no reply (circuit_open, disconnected,
    deadline, unavailable, error); only those of unreachable spokes are kept."""
    unreachable = sorted(unreachable)
    why = {s: r for s, r in (reasons or {}).items() if s in unreachable and r}
    reply = command_pb2.Reply(
        command_id=command_id,
        responder=hub,
        request_digest=request_digest,
        issue_time=commands.to_timestamp(commands.now()),
        fan_out=command_pb2.FanOut(
            answered_spokes=sorted(answered),
            unreachable_spokes=unreachable,
            omitted_spokes=sorted(omitted),
            unreachable_reasons=why,
        ),
    )
    return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)


def verify_fan_out(
    hub_reply: command_pb2.SignedEnvelope | None,
    *,
    trust: TrustStore,
    hub_name: str,
    command_id: str,
    command_payload: bytes,
    reply_signers: Collection[str],
    unreachable_spokes: Collection[str],
    omitted_spokes: Collection[str] = (),
) -> command_pb2.FanOut:
    """Check a ListAgents fan-out: the hub's signed account against what came beside it.

    Args:
        hub_reply: ``HubServiceListAgentsResponse.hub_reply`` (None or empty if absent).
        trust: the client's trust store (the hub must be in it with role hub).
        hub_name: the hub the command was addressed to.
        command_id, command_payload: the command sent, exactly as signed.
        reply_signers: the signer of each spoke reply received (already verified).
        unreachable_spokes: ``HubServiceListAgentsResponse.unreachable_spokes``.
        omitted_spokes: ``HubServiceListAgentsResponse.omitted_spokes``.

    Raises:
        FanOutInvalidError: anything does not match.
    """
    if hub_reply is None or not hub_reply.payload:
        raise FanOutInvalidError("the hub sent no signed account of its fan-out")
    try:
        verified = envelope.verify(
            hub_reply, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=trust, roles={Role.HUB}
        )
        reply = commands.parse_reply(verified.payload)
    except errors.CommandError as exc:
        raise FanOutInvalidError(f"fan-out account failed verification: {exc.message}") from exc
    if verified.peer != hub_name or reply.responder != hub_name:
        raise FanOutInvalidError(f"fan-out account is signed by {verified.peer}, not {hub_name}")
    if reply.command_id != command_id or reply.request_digest != commands.digest(command_payload):
        raise FanOutInvalidError("fan-out account does not answer the command sent")
    if reply.WhichOneof("result") != "fan_out":
        raise FanOutInvalidError("the hub's reply carries no fan_out")
    fan = reply.fan_out
    signers = sorted(reply_signers)
    if len(set(signers)) != len(signers) or signers != sorted(fan.answered_spokes):
        raise FanOutInvalidError(
            f"replies came from {signers}; the hub signed {sorted(fan.answered_spokes)}"
        )
    if sorted(unreachable_spokes) != sorted(fan.unreachable_spokes):
        raise FanOutInvalidError(
            f"unreachable spokes {sorted(unreachable_spokes)} differ from the hub's signed "
            f"{sorted(fan.unreachable_spokes)}"
        )
    if sorted(omitted_spokes) != sorted(fan.omitted_spokes):
        raise FanOutInvalidError(
            f"omitted spokes {sorted(omitted_spokes)} differ from the hub's signed "
            f"{sorted(fan.omitted_spokes)}"
        )
    return fan
