"""Connect mode's wire pieces, shared by the hub (hub/link_*.py) and the spoke (spoke/link.py).

A connect-mode spoke dials the hub's ``SpokeLinkService`` (docs/protocol.md "Connect mode"):
it opens a Control stream with a hello signed by its own key (:func:`sign_hello`, checked by
:func:`verify_hello`), then heartbeats; it serves each call the hub announces on a Serve
stream of its own. Inside a call travel the SpokeService request and response messages of
dial mode, unchanged; a call ends with a :class:`LinkServeStatus` that carries what a gRPC
status would (:func:`status_of`, :func:`rpc_error_of`).

Exception hierarchy (the rest are ``hubspoke.errors``)::

    hubspoke.errors.CommandError
     ├── LinkRefusedError      (PERMISSION_DENIED, LINK_REFUSED) a hello the hub will not take
     ├── SpokeDisconnectedError (UNAVAILABLE, SPOKE_DISCONNECTED) no open session to the spoke
     └── LinkBusyError         (RESOURCE_EXHAUSTED, LINK_BUSY) too many calls pending
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.protobuf import duration_pb2, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2  # type: ignore[import-untyped]  # no stubs ship

from . import commands, envelope, errors, version
from .gen.federation.v1 import command_pb2, link_service_pb2, spoke_service_pb2
from .grpc import status as sstatus
from .keys import SigningKey
from .trust import Role, TrustStore

__all__ = [
    "PAYLOAD_TYPE_LINK_HELLO",
    "LinkBusyError",
    "LinkRefusedError",
    "SpokeDisconnectedError",
    "SpokeMethod",
    "rpc_error_of",
    "sign_hello",
    "spoke_method",
    "status_of",
    "verify_hello",
]

PAYLOAD_TYPE_LINK_HELLO: Final = "application/vnd.federation.v1.link-hello+proto"
"""The payload type of a signed LinkHello."""
MIN_NONCE: Final = 16
MAX_NONCE: Final = 64
SERVICE: Final = link_service_pb2.DESCRIPTOR.services_by_name["SpokeLinkService"]
CONTROL: Final = f"/{SERVICE.full_name}/Control"
SERVE: Final = f"/{SERVICE.full_name}/Serve"
_DETAILS_KEY: Final = "grpc-status-details-bin"


class LinkRefusedError(errors.CommandError):
    """The hub does not take this spoke's hello (not a connect-mode spoke it knows)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "LINK_REFUSED"


class SpokeDisconnectedError(errors.SpokeUnavailableError):
    """A connect-mode spoke has no open control session: calls fail at once."""

    reason = "SPOKE_DISCONNECTED"


class LinkBusyError(errors.CommandError):
    """A connect-mode spoke already has ``link_max_pending_calls`` calls in flight."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "LINK_BUSY"


@dataclass(frozen=True, slots=True)
class SpokeMethod:
    """One SpokeService method as a Serve stream carries it."""

    name: str
    request: type[Message]
    response: type[Message]
    streaming: bool


def _methods() -> dict[str, SpokeMethod]:
    service = spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"]
    return {
        m.name: SpokeMethod(
            m.name,
            message_factory.GetMessageClass(m.input_type),
            message_factory.GetMessageClass(m.output_type),
            m.server_streaming,
        )
        for m in service.methods
    }


_METHODS: Final = _methods()


def spoke_method(name: str) -> SpokeMethod:
    """The SpokeService method called ``name``.

    Raises:
        hubspoke.errors.InvalidCommandError: there is none.
    """
    found = _METHODS.get(name)
    if found is None:
        raise errors.InvalidCommandError(f"SpokeService has no method {name[:64]!r}")
    return found


def sign_hello(
    spoke: str, hub: str, key: SigningKey, heartbeat_interval_s: float
) -> command_pb2.SignedEnvelope:
    """A fresh hello of ``spoke`` to ``hub``, signed by the spoke's key."""
    hello = link_service_pb2.LinkHello(
        spoke=spoke,
        hub=hub,
        protocol_version=version.PROTOCOL_VERSION,
        nonce=secrets.token_bytes(24),
        issue_time=commands.to_timestamp(commands.now()),
        heartbeat_interval=_duration(heartbeat_interval_s),
    )
    return envelope.sign(hello.SerializeToString(), PAYLOAD_TYPE_LINK_HELLO, key)


def verify_hello(
    signed: command_pb2.SignedEnvelope,
    *,
    hub: str,
    trust: TrustStore,
    max_skew: dt.timedelta,
    now: dt.datetime | None = None,
) -> link_service_pb2.LinkHello:
    """Check a hello: signed by a trusted spoke key for the spoke it names, for this hub, of
    our protocol major, with a nonce of 16-64 bytes, issued within ``max_skew`` of now.

    Raises:
        hubspoke.errors.SignatureInvalidError: not signed by a trusted spoke key of that spoke.
        hubspoke.errors.InvalidCommandError: malformed, or a nonce of the wrong size.
        hubspoke.errors.WrongAudienceError: the hello is for another hub.
        hubspoke.errors.CommandExpiredError: issued outside the clock skew.
        hubspoke.version.ProtocolVersionError: another protocol major.
    """
    verified = envelope.verify(
        signed, payload_type=PAYLOAD_TYPE_LINK_HELLO, trust=trust, roles={Role.SPOKE}
    )
    try:
        hello = link_service_pb2.LinkHello.FromString(verified.payload)
    except DecodeError as exc:
        raise errors.InvalidCommandError("the hello is not a valid LinkHello") from exc
    if hello.spoke != verified.peer:
        raise errors.SignatureInvalidError(f"hello of {hello.spoke!r} signed by {verified.peer}")
    if hello.hub != hub:
        raise errors.WrongAudienceError(f"the hello is for hub {hello.hub[:64]!r}, not {hub}")
    version.check_peer_protocol(str(hello.protocol_version), f"spoke {hello.spoke}")
    if not MIN_NONCE <= len(hello.nonce) <= MAX_NONCE:
        raise errors.InvalidCommandError(f"the hello's nonce must be {MIN_NONCE}-{MAX_NONCE} bytes")
    at = now or commands.now()
    try:
        issued = commands.from_timestamp(hello.issue_time)
    except (ValueError, OverflowError) as exc:
        raise errors.InvalidCommandError("the hello's issue_time is out of range") from exc
    if abs(issued - at) > max_skew:
        raise errors.CommandExpiredError(
            f"the hello was issued {abs((issued - at).total_seconds()):.0f} s away from the "
            f"hub's clock (at most {max_skew.total_seconds():g} s)"
        )
    return hello


def status_of(exc: BaseException | None) -> link_service_pb2.LinkServeStatus:
    """How a Serve stream ends: OK for None, the error's code, message and ErrorInfo for a
    ``CommandError``, DEADLINE_EXCEEDED for a timeout, INTERNAL otherwise."""
    if exc is None:
        return link_service_pb2.LinkServeStatus(code=0)
    if isinstance(exc, TimeoutError):
        exc = _DeadlineError("the call's deadline passed on the spoke")
    err = exc if isinstance(exc, errors.CommandError) else errors.CommandError("internal error")
    st = sstatus.to_status(err)
    details = b"".join(v for k, v in st.trailing_metadata if k == _DETAILS_KEY)  # type: ignore[misc]  # grpc.Status is untyped
    return link_service_pb2.LinkServeStatus(
        code=st.code.value[0], message=err.message, details=details
    )


class _DeadlineError(errors.CommandError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = ""


def rpc_error_of(st: link_service_pb2.LinkServeStatus) -> grpc.aio.AioRpcError:
    """A non-OK Serve status as the error a dial-mode stub call would raise."""
    code = next((c for c in grpc.StatusCode if c.value[0] == st.code), grpc.StatusCode.UNKNOWN)
    trailing: list[tuple[str, Any]] = []
    if st.details:
        try:
            status_pb2.Status.FromString(st.details)
            trailing.append((_DETAILS_KEY, st.details))
        except DecodeError:
            pass
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), st.message, None
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromMilliseconds(round(seconds * 1000))
    return out
