"""HubForwardService, served by every hubd: carry another hubd's call on a session held here.

A call for a connect-mode spoke whose control session this hubd holds may arrive at another
hubd of the hub; that hubd forwards it here (hub/forward_stub.py). ``ForwardCall`` checks the
forward (hub/forward_wire.py: signed by the hub's key; over mutual TLS the caller's
certificate must name the hub), announces the SpokeService call on the spoke's session
(hub/link_sessions.py ``LinkSessions.exchange``, with its bounds) and streams back each
response message as the spoke sent it, then the call's status. Without a session to the spoke
(it moved or left) the status is UNAVAILABLE, SPOKE_DISCONNECTED.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from hubspoke import errors, version
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import hub_forward_pb2
from hubspoke.grpc import status as sstatus
from hubspoke.grpc.peer import remember_peer
from hubspoke.keys import SigningKey
from hubspoke.link_protocol import status_of

from .forward_wire import status_of_rpc, verify_forward
from .link_sessions import LinkSessions

__all__ = ["FORWARD_SERVICE", "ForwardServicer"]

log = structlog.get_logger("hubspoke.hub.forward")

FORWARD_SERVICE = hub_forward_pb2.DESCRIPTOR.services_by_name["HubForwardService"]
Request = hub_forward_pb2.HubForwardServiceForwardCallRequest
Response = hub_forward_pb2.HubForwardServiceForwardCallResponse
_Ctx = grpc.aio.ServicerContext[Any, Any]


class ForwardServicer:
    """The holder's side of forwarding."""

    def __init__(
        self, hub: str, key: SigningKey, sessions: LinkSessions, max_skew: dt.timedelta
    ) -> None:
        self._hub = hub
        self._key = key
        self._sessions = sessions
        self._max_skew = max_skew

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]  # stubs lag grpcio
        """The generic handler to add to the hub's server."""
        handlers = {
            "ForwardCall": grpc.unary_stream_rpc_method_handler(
                self.forward_call,
                request_deserializer=_parse,
                response_serializer=Response.SerializeToString,
            )
        }
        return grpc.method_handlers_generic_handler(FORWARD_SERVICE.full_name, handlers)

    async def forward_call(self, request: Request | None, context: _Ctx) -> AsyncIterator[Response]:
        remember_peer(context)
        try:
            version.check_peer_protocol(version.peer_protocol(context.invocation_metadata()))
            if request is None:
                raise errors.InvalidCommandError("a request is not valid protobuf")
            fwd = verify_forward(
                request.forward, hub=self._hub, key=self._key, max_skew=self._max_skew
            )
            sgrpc.bind_signer(self._hub, "forward")
        except errors.CommandError as exc:
            log.info("forward_refused", code=exc.code.name, reason=exc.reason, why=exc.message)
            abort: Callable[[grpc.Status], Any] = context.abort_with_status  # type: ignore[attr-defined]  # stubs lag grpcio
            await abort(sstatus.to_status(exc))
            return
        log.debug("forward_call", spoke=fwd.spoke, rpc=fwd.method.name)
        try:
            responses = self._sessions.exchange(fwd.spoke, fwd.method, fwd.request, fwd.timeout_s)
            async for message in responses:
                yield Response(response=message.SerializeToString())
        except grpc.aio.AioRpcError as exc:
            yield Response(status=status_of_rpc(exc))
        except errors.CommandError as exc:
            yield Response(status=status_of(exc))
        else:
            yield Response(status=status_of(None))


def _parse(raw: bytes) -> Request | None:
    try:
        return Request.FromString(raw)
    except Exception:
        return None
