"""The signed HubForward: how one hubd asks another to carry a call (hub_forward.proto).

Every hubd of a hub holds the hub's key, so a forward is signed with it (:func:`sign_forward`)
and the holder checks it against the same key (:func:`verify_forward`): payload type, the
signature, this hub's name, an issue time within the clock skew, a nonce of 16-64 bytes and a
SpokeService method it knows. A forward replayed within the skew only replays the Relay it
carries, which the spoke refuses (it claims each relay's nonce).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, Final

import grpc
from cryptography.exceptions import InvalidSignature
from google.protobuf.message import DecodeError, Message

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2, hub_forward_pb2, link_service_pb2
from hubspoke.keys import SigningKey
from hubspoke.link_protocol import SpokeMethod, spoke_method

__all__ = ["PAYLOAD_TYPE_FORWARD", "Forward", "sign_forward", "status_of_rpc", "verify_forward"]

PAYLOAD_TYPE_FORWARD: Final = "application/vnd.federation.v1.hub-forward+proto"
_DETAILS_KEY: Final = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class Forward:
    """A verified forward: the call to carry on ``spoke``'s session."""

    spoke: str
    method: SpokeMethod
    request: Message
    timeout_s: float


def sign_forward(
    hub: str, key: SigningKey, spoke: str, method: str, request: bytes, timeout_s: float
) -> command_pb2.SignedEnvelope:
    """A fresh forward of one call, signed by the hub's key."""
    fwd = hub_forward_pb2.HubForward(
        hub=hub,
        spoke=spoke,
        method=method,
        request=request,
        issue_time=commands.to_timestamp(commands.now()),
        nonce=secrets.token_bytes(24),
    )
    fwd.timeout.FromMilliseconds(max(round(timeout_s * 1000), 1))
    return envelope.sign(fwd.SerializeToString(), PAYLOAD_TYPE_FORWARD, key)


def verify_forward(
    signed: command_pb2.SignedEnvelope, *, hub: str, key: SigningKey, max_skew: dt.timedelta
) -> Forward:
    """Check a forward as the module docstring says.

    Raises:
        hubspoke.errors.SignatureInvalidError: not signed by the hub's key.
        hubspoke.errors.InvalidCommandError: malformed, a bad nonce or an unknown method.
        hubspoke.errors.WrongAudienceError: for another hub.
        hubspoke.errors.CommandExpiredError: issued outside the clock skew.
    """
    if signed.payload_type != PAYLOAD_TYPE_FORWARD or not signed.payload:
        raise errors.InvalidCommandError(f"a forward's payload_type is {PAYLOAD_TYPE_FORWARD}")
    message = envelope.pae(signed.payload_type, signed.payload)
    if not any(_good(key, sig, message) for sig in signed.signatures[:4]):
        raise errors.SignatureInvalidError("a forward must be signed by the hub's key")
    try:
        fwd = hub_forward_pb2.HubForward.FromString(signed.payload)
    except DecodeError:
        raise errors.InvalidCommandError("a forward is not a HubForward") from None
    if fwd.hub != hub:
        raise errors.WrongAudienceError(f"a forward for hub {fwd.hub[:64]!r}, this is {hub}")
    if not 16 <= len(fwd.nonce) <= 64:
        raise errors.InvalidCommandError("a forward's nonce has 16 to 64 bytes")
    issued = commands.from_timestamp(fwd.issue_time)
    if abs(commands.now() - issued) > max_skew:
        raise errors.CommandExpiredError("a forward issued outside the clock skew")
    method = spoke_method(fwd.method)
    try:
        request = method.request.FromString(fwd.request)
    except DecodeError:
        raise errors.InvalidCommandError("a forward's request is not valid protobuf") from None
    timeout = fwd.timeout.ToMilliseconds() / 1000
    if timeout <= 0:
        raise errors.InvalidCommandError("a forward carries a positive timeout")
    return Forward(fwd.spoke, method, request, timeout)


def _good(key: SigningKey, sig: command_pb2.Signature, message: bytes) -> bool:
    if sig.key_id.rpartition("/")[2] != key.key_id.rpartition("/")[2]:
        return False
    try:
        key.public.verify(sig.sig, message)
    except InvalidSignature:
        return False
    return True


def status_of_rpc(exc: grpc.aio.AioRpcError) -> link_service_pb2.LinkServeStatus:
    """A spoke's error status (as a stub call raised it) for a forward's answer."""
    trailing: Any = exc.trailing_metadata() or ()
    details = b"".join(v for k, v in trailing if k == _DETAILS_KEY and isinstance(v, bytes))
    return link_service_pb2.LinkServeStatus(
        code=exc.code().value[0], message=exc.details() or "", details=details
    )
