"""The forwarding side: a call for a connect-mode spoke held by another hubd goes to the holder.

:class:`Forwarder` has the shape of ``LinkSessions.exchange``: hub/link_sessions.py's
``ConnectStub`` uses it when this hubd has no session to the spoke. It reads the spoke's
lease (hub/forward_lease.py), dials the holder's forward address (one channel per holder,
over the hub's TLS with the hub's own certificate, checking that the holder's names the hub),
sends the call signed by the hub's key (hub/forward_wire.py) and yields the spoke's response
messages as the holder passes them on; the spoke's error status is raised as a stub call
would raise it. No lease, our own stale lease, or a holder that cannot be reached within
``link_forward_timeout_s``: ``SpokeDisconnectedError`` (UNAVAILABLE, SPOKE_DISCONNECTED) at
once, as for a spoke without a session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from hubspoke import version
from hubspoke.gen.federation.v1 import hub_forward_pb2, hub_forward_pb2_grpc, link_service_pb2
from hubspoke.grpc.channel import channel_args
from hubspoke.grpc.server import ServerOptions
from hubspoke.keys import SigningKey
from hubspoke.link_protocol import SpokeDisconnectedError, SpokeMethod, rpc_error_of

from .forward_lease import LeaseStore
from .forward_wire import sign_forward

__all__ = ["Forwarder"]

log = structlog.get_logger("hubspoke.hub.forward")

_Request = hub_forward_pb2.HubForwardServiceForwardCallRequest


class Forwarder:
    """Calls to connect-mode spokes whose sessions other hubds hold."""

    def __init__(
        self,
        hub: str,
        key: SigningKey,
        leases: LeaseStore,
        own_address: str,
        options: ServerOptions,
        credentials: grpc.ChannelCredentials | None,
        timeout_s: float,
    ) -> None:
        self._hub = hub
        self._key = key
        self._leases = leases
        self.own_address = own_address
        self._options = options
        self._credentials = credentials
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def exchange(
        self, spoke: str, method: SpokeMethod, request: Message, timeout_s: float | None
    ) -> AsyncIterator[Message]:
        """Forward one call to ``spoke``'s holder and yield its response messages.

        Raises:
            SpokeDisconnectedError: no other hubd holds it, or its holder does not answer.
            grpc.aio.AioRpcError: the spoke's (or the holder's) non-OK status.
        """
        lease = await self._leases.get(spoke)
        if lease is None or lease.holder == self.own_address:
            raise SpokeDisconnectedError(f"spoke {spoke} is not connected", spoke=spoke)
        channel = self._channel(lease.holder)
        if not await _reachable(channel, self._timeout_s):
            raise SpokeDisconnectedError(
                f"spoke {spoke} is held by hubd {lease.holder}, which does not answer",
                spoke=spoke,
            )
        timeout = 3600.0 if timeout_s is None else timeout_s
        signed = sign_forward(
            self._hub, self._key, spoke, method.name, request.SerializeToString(), timeout
        )
        stub = hub_forward_pb2_grpc.HubForwardServiceStub(channel)
        call = stub.ForwardCall(
            _Request(forward=signed), timeout=timeout, metadata=version.CALL_METADATA
        )
        try:
            async for out in call:
                if out.WhichOneof("kind") == "status":
                    if out.status.code != grpc.StatusCode.OK.value[0]:
                        raise rpc_error_of(out.status)
                    return
                try:
                    yield method.response.FromString(out.response)
                except DecodeError:
                    raise rpc_error_of(
                        _status(grpc.StatusCode.INTERNAL, "undecodable forwarded response")
                    ) from None
            raise rpc_error_of(
                _status(grpc.StatusCode.UNAVAILABLE, "the holder ended a forwarded call unanswered")
            )
        finally:
            call.cancel()

    def _channel(self, address: str) -> grpc.aio.Channel:
        found = self._channels.get(address)
        if found is not None:
            return found
        args: list[tuple[str, int | str]] = list(channel_args(self._options))
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(address, options=args)
        else:
            # The holder serves the hub's certificate: it must name the hub.
            args.append(("grpc.ssl_target_name_override", self._hub))
            channel = grpc.aio.secure_channel(address, self._credentials, options=args)
        self._channels[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)


async def _reachable(channel: grpc.aio.Channel, timeout_s: float) -> bool:
    """Whether ``channel`` connects within ``timeout_s`` (a refused connection: False at once)."""
    ready = grpc.ChannelConnectivity.READY
    failed = grpc.ChannelConnectivity.TRANSIENT_FAILURE
    try:
        async with asyncio.timeout(timeout_s):
            state = channel.get_state(try_to_connect=True)
            while state is not ready:
                if state is failed:
                    return False
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        return False
    return True


def _status(code: grpc.StatusCode, message: str) -> link_service_pb2.LinkServeStatus:
    return link_service_pb2.LinkServeStatus(code=code.value[0], message=message)
