"""Server assembly: raw-bytes handlers, error conversion, health, reflection.

Handlers take the request as raw bytes and parse it themselves, so corrupt or oversized
bodies answer INVALID_ARGUMENT instead of grpc's UNKNOWN with a leaked exception text.
The transport identity of every call (its TLS certificate's names) is kept for
``peer.bind_signer``, which the hub's gate and the spoke's verifier call on each signer.
Every call logs one canonical line (rpc, peer, code, duration_ms) with its context bound,
and is reported to the server's ``observe`` hook (its metrics), if it has one.
A caller that announces another major protocol version (metadata ``hubspoke-protocol``) is
refused with FAILED_PRECONDITION / PROTOCOL_VERSION_MISMATCH, by our services and by the
health ``Check``, which also announces ours (the hub's probe is the handshake).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hubspoke import errors, version
from hubspoke.log_processors import bind_call

from . import status
from .peer import remember_peer

log = structlog.get_logger("hubspoke.grpc")

UnaryImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]
StreamImpl = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]
RpcObserver = Callable[[str, grpc.StatusCode, str, float], None]
"""Told of every answered call: (rpc, status code, reason, seconds)."""


def _ignore(rpc: str, code: grpc.StatusCode, reason: str, seconds: float) -> None:
    pass


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Transport limits and keepalive, shared by every server we build."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request or response accepted, in bytes."""
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    min_ping_interval_ms: int = 10_000
    """Pings closer than this from a client are a protocol violation (GOAWAY)."""
    max_concurrent_streams: int = 256
    reuse_port: bool = False
    """SO_REUSEPORT: several processes serve one port (``spoked --workers``, spoke/workers.py);
    off, a taken port fails the start."""


def _server_args(opts: ServerOptions) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 1 if opts.reuse_port else 0),
        ("grpc.max_receive_message_length", opts.max_message_bytes),
        ("grpc.max_send_message_length", opts.max_message_bytes),
        ("grpc.keepalive_time_ms", opts.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", opts.keepalive_timeout_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", opts.min_ping_interval_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_concurrent_streams", opts.max_concurrent_streams),
    ]


@dataclass
class Service:
    """A servicer object bound to its proto service: methods are looked up by RPC name."""

    descriptor: descriptor.ServiceDescriptor
    servicer: object
    names: list[str] = field(default_factory=list)

    def handler(self, observe: RpcObserver = _ignore) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]  # stubs lag grpcio
        handlers: dict[str, grpc.RpcMethodHandler] = {}  # type: ignore[type-arg]  # stubs lag grpcio
        for m in self.descriptor.methods:
            impl = getattr(self.servicer, m.name)
            req_cls = message_factory.GetMessageClass(m.input_type)
            full = f"/{self.descriptor.full_name}/{m.name}"
            if m.server_streaming:
                handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                    _wrap_stream(full, req_cls, impl, observe),
                    response_serializer=_serialize,
                )
            else:
                handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                    _wrap_unary(full, req_cls, impl, observe),
                    response_serializer=_serialize,
                )
            self.names.append(full)
        return grpc.method_handlers_generic_handler(self.descriptor.full_name, handlers)


def _serialize(msg: Message) -> bytes:
    return msg.SerializeToString()


def _parse(req_cls: type[Message], raw: bytes) -> Message:
    try:
        return req_cls.FromString(raw)
    except DecodeError as exc:
        raise errors.InvalidCommandError("request body is not a valid protobuf message") from exc


def _begin(rpc: str, context: grpc.aio.ServicerContext[Any, Any]) -> float:
    bind_call(rpc, context.peer())  # structlog's clear + bind of rpc and peer, in one pass
    remember_peer(context)  # for bind_signer: the TLS identity is checked against signers
    return time.monotonic()


def bind_command(command_id: str, issuer: str) -> None:
    """Name the call's command in every log line that follows, the canonical ``rpc`` line
    included. The hub's gate and the spoke's verifier call it as soon as the client's
    signature checks out, so the two sides' logs join on ``command_id``."""
    structlog.contextvars.bind_contextvars(command_id=command_id, issuer=issuer)


_ACCEPTED_MAX = 16
_accepted: set[str | None] = set()
"""Announcements already found to name our major version (at most ``_ACCEPTED_MAX``, so a
caller cannot grow it): checked again by a set lookup, not parsed per call (issue 13)."""


def _check_protocol(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Refuse a caller that announced another major protocol version (hubspoke.version)."""
    announced = version.peer_protocol(context.invocation_metadata())
    if announced in _accepted:
        return
    version.check_peer_protocol(announced, "the caller")
    if len(_accepted) < _ACCEPTED_MAX:
        _accepted.add(announced)


class _Health(health_aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """grpc.health.v1 that is also the protocol handshake: ``Check`` refuses a caller of
    another major protocol version (FAILED_PRECONDITION) and announces ours in its initial
    metadata, which the hub's probe reads.

    ``status_source``, when set (spoke/health.py), answers a caller that sent
    ``hubspoke-status-nonce-bin`` with signed status bytes in ``hubspoke-status-bin``."""

    status_source: Callable[[bytes], bytes | None] | None = None

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        try:
            _check_protocol(context)
        except errors.CommandError as exc:
            await _abort(context, status.to_status(exc))
        initial: tuple[tuple[str, str | bytes], ...] = version.CALL_METADATA
        source = self.status_source
        if source is not None:
            for key, value in context.invocation_metadata() or ():
                if key == "hubspoke-status-nonce-bin" and isinstance(value, bytes):
                    signed = source(value)
                    if signed is not None:
                        initial = (*initial, ("hubspoke-status-bin", signed))
                    break
        await context.send_initial_metadata(initial)
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response


def _failure(exc: Exception) -> grpc.Status:
    if isinstance(exc, errors.CommandError):
        return status.to_status(exc)
    log.error("rpc_internal_error", exc_info=exc)
    return status.internal_status()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], st: grpc.Status) -> None:
    # grpc-stubs 1.53 lacks aio's abort_with_status; grpcio has had it since 1.38.
    abort: Callable[[grpc.Status], Awaitable[None]] = context.abort_with_status  # type: ignore[attr-defined]  # see above
    await abort(st)


def _finish(
    rpc: str, start: float, observe: RpcObserver, code: grpc.StatusCode, reason: str = ""
) -> None:
    seconds = time.monotonic() - start
    log.info("rpc", code=code.name, reason=reason or None, duration_ms=round(seconds * 1000, 2))
    observe(rpc, code, reason, seconds)


def _wrap_unary(
    rpc: str, req_cls: type[Message], impl: UnaryImpl, observe: RpcObserver
) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[Message]]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        start = _begin(rpc, context)
        try:
            _check_protocol(context)
            response = await impl(_parse(req_cls, raw), context)
        except Exception as exc:  # converted to a status at this one boundary
            st = _failure(exc)
            _finish(rpc, start, observe, st.code, getattr(exc, "reason", ""))
            await _abort(context, st)
            raise  # unreachable: abort_with_status raises
        _finish(rpc, start, observe, grpc.StatusCode.OK)
        return response

    return handle


def _wrap_stream(
    rpc: str, req_cls: type[Message], impl: StreamImpl, observe: RpcObserver
) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Message]]:
    async def handle(
        raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Message]:
        start = _begin(rpc, context)
        try:
            _check_protocol(context)
            async for item in impl(_parse(req_cls, raw), context):
                yield item
        except Exception as exc:  # converted to a status at this one boundary
            st = _failure(exc)
            _finish(rpc, start, observe, st.code, getattr(exc, "reason", ""))
            await _abort(context, st)
            raise
        _finish(rpc, start, observe, grpc.StatusCode.OK)

    return handle


@dataclass
class BuiltServer:
    """A started-or-startable server with its health servicer and bound port."""

    server: grpc.aio.Server
    health: Any  # grpc_health.v1._async.HealthServicer (untyped)
    port: int
    methods: list[str]

    async def serving(self, services: Sequence[str]) -> None:
        for name in ("", *services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def build_server(
    services: Sequence[Service],
    address: str,
    options: ServerOptions,
    credentials: grpc.ServerCredentials | None = None,
    observe: RpcObserver = _ignore,
) -> BuiltServer:
    """Build (not start) a grpc.aio server with our services, health and reflection.

    Must be called inside the running event loop (PITFALLS: grpc.aio objects).
    """
    server = grpc.aio.server(options=_server_args(options))
    methods: list[str] = []
    for svc in services:
        server.add_generic_rpc_handlers((svc.handler(observe),))
        methods += svc.names
    health_servicer = _Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.descriptor.full_name for s in services]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME],
        server,
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpcio reports a failed bind as RuntimeError
        raise OSError(f"could not bind {address}: address in use or unavailable") from exc
    if port == 0:
        raise OSError(f"could not bind {address}")
    return BuiltServer(server=server, health=health_servicer, port=port, methods=methods)
