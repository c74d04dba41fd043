"""The one boundary between domain errors and gRPC status, on both sides of a call.

Servers turn a ``CommandError`` into ``google.rpc.Status`` with an ``ErrorInfo`` (reason,
domain "federation", metadata). Clients turn an ``AioRpcError`` back into ``CallFailure``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no stubs ship
from grpc_status import rpc_status

from hubspoke import errors

DOMAIN = "federation"
_DETAILS_KEY = "grpc-status-details-bin"


def to_status(err: errors.CommandError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(code=err.code.value[0], message=err.message, details=[detail])
    status: grpc.Status = rpc_status.to_status(proto)
    return status


def internal_status() -> grpc.Status:
    return to_status(errors.CommandError("internal error; see the server log"))


@dataclass(frozen=True, slots=True)
class CallFailure:
    """A failed call as the caller sees it: code, message, and the ErrorInfo if any."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def from_rpc_error(err: grpc.aio.AioRpcError) -> CallFailure:
    code, message = err.code(), err.details() or ""
    trailers: Iterable[tuple[str, str | bytes]] = err.trailing_metadata() or ()  # type: ignore[assignment]  # stubs type metadata loosely
    for key, value in trailers:
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        proto = status_pb2.Status.FromString(value)
        for d in proto.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info):
                return CallFailure(code, proto.message or message, info.reason, dict(info.metadata))
    return CallFailure(code, message)
