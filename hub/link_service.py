"""SpokeLinkService, served by hubd: connect-mode spokes dial in here.

``Control``: the first message must be a hello signed by a spoke this hub links in connect
mode (``hubspoke.link_protocol.verify_hello``; over mutual TLS its certificate must name the
spoke too); the hub answers with a welcome (session nonce, heartbeat interval), then sends
a call announcement per call. Each heartbeat carries the spoke's signed status bound to the
session nonce, newer than the last; it feeds the spoke's health (hub/health.py). A session
without a heartbeat for ``link_missed_heartbeats`` intervals is ended, and its spoke shows
DISCONNECTED.

``Serve``: the first message names an announced call (and the spoke: its certificate must
name it over mutual TLS); the hub sends the method and request; the spoke's response
messages and final status go to the waiting caller (hub/link_sessions.py). When the caller
is gone, the hub ends the stream.

The control stream does no work but this: a heartbeat is one signature check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from hubspoke import commands, errors, version
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import link_service_pb2
from hubspoke.grpc import status as sstatus
from hubspoke.grpc.peer import remember_peer
from hubspoke.link_protocol import SERVICE, verify_hello
from hubspoke.trust import TrustStore

from .forward_hooks import LeaseKeeper
from .health import HealthMonitor
from .link_metrics import LinkMetrics
from .link_sessions import LinkSession, LinkSessions, PendingCall, refuse_unknown

__all__ = ["LinkServicer"]

log = structlog.get_logger("hubspoke.hub.link")

_Ctx = grpc.aio.ServicerContext[Any, Any]
ControlIn = link_service_pb2.SpokeLinkServiceControlRequest
ControlOut = link_service_pb2.SpokeLinkServiceControlResponse
ServeIn = link_service_pb2.SpokeLinkServiceServeRequest
ServeOut = link_service_pb2.SpokeLinkServiceServeResponse


class LinkServicer:
    """The hub's side of connect mode."""

    def __init__(
        self,
        hub: str,
        trust: TrustStore,
        sessions: LinkSessions,
        monitor: HealthMonitor,
        accepts: Callable[[str], bool],
        metrics: LinkMetrics | None = None,
        leases: LeaseKeeper | None = None,
    ) -> None:
        """``accepts``: whether a spoke may link in connect mode (the registry decides).
        ``leases``: the shared hello nonces and the spokes' leases in the hub's Redis, for
        several hubds (hub/forward_hooks.py); None: this hubd alone."""
        self._hub = hub
        self._trust = trust
        self._sessions = sessions
        self._monitor = monitor
        self._accepts = accepts
        self._metrics = metrics
        self._leases = leases

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]  # stubs lag grpcio
        """The generic handler to add to the hub's server."""
        handlers = {
            "Control": grpc.stream_stream_rpc_method_handler(
                _guarded(self.control, ControlIn),
                response_serializer=ControlOut.SerializeToString,
            ),
            "Serve": grpc.stream_stream_rpc_method_handler(
                _guarded(self.serve, ServeIn),
                response_serializer=ServeOut.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)

    # -- Control ---------------------------------------------------------------------------

    async def control(
        self, requests: AsyncIterator[ControlIn], context: _Ctx
    ) -> AsyncIterator[ControlOut]:
        first = await _first(requests, self._sessions.cfg.hello_timeout_s, "hello")
        if first.WhichOneof("kind") != "hello":
            raise errors.InvalidCommandError("a control stream starts with a hello")
        hello = verify_hello(
            first.hello, hub=self._hub, trust=self._trust, max_skew=self._sessions.cfg.max_skew
        )
        sgrpc.bind_signer(hello.spoke, "hello")
        if not self._accepts(hello.spoke):
            raise refuse_unknown(hello.spoke)
        self._sessions.claim_nonce(hello.spoke, hello.nonce)
        if self._leases is not None:  # a hello replayed to another hubd is refused too
            await self._leases.claim_hello(hello.spoke, hello.nonce)
        interval = hello.heartbeat_interval.ToMilliseconds() / 1000
        session = self._sessions.open(hello.spoke, interval)
        reader = asyncio.create_task(self._heartbeats(requests, session), name="link-heartbeats")
        why = "stream ended"
        try:
            if self._leases is not None:
                await self._leases.opened(session)
            welcome = link_service_pb2.LinkWelcome(
                hub=self._hub, nonce=session.nonce, protocol_version=version.PROTOCOL_VERSION
            )
            welcome.heartbeat_interval.FromMilliseconds(round(session.interval_s * 1000))
            yield ControlOut(welcome=welcome)
            while (out := await session.next_outgoing()) is not None:
                yield out
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if reader.done() and not reader.cancelled():
                failed = reader.exception()
                why = reader.result() if failed is None else f"refused: {failed}"
            self._sessions.close(session, why)
            if self._leases is not None:
                self._leases.closed(session)
            if self._sessions.get(hello.spoke) is None:  # not replaced by a newer session
                self._monitor.observe_link_closed(hello.spoke, commands.now(), why)
        if reader.done() and not reader.cancelled():
            error = reader.exception()
            if isinstance(error, errors.CommandError):
                raise error

    async def _heartbeats(self, requests: AsyncIterator[ControlIn], session: LinkSession) -> str:
        """Read heartbeats until the stream ends or one is missing; say why it ended."""
        limit = session.interval_s * self._sessions.cfg.missed_heartbeats
        why = "the control stream failed"
        try:
            while True:
                try:
                    async with asyncio.timeout(limit):
                        msg = await anext(requests)
                except StopAsyncIteration:
                    why = "the spoke closed its control stream"
                    return why
                except TimeoutError:
                    log.warning("link_heartbeats_missed", spoke=session.spoke, seconds=limit)
                    why = f"missed {self._sessions.cfg.missed_heartbeats} heartbeats"
                    return why
                if msg.WhichOneof("kind") != "heartbeat":
                    why = "a message other than a heartbeat after the hello"
                    raise errors.InvalidCommandError("after the hello, only heartbeats")
                try:
                    self._heartbeat(session, msg.heartbeat)
                except errors.CommandError as exc:
                    why = f"a heartbeat was refused: {exc.message}"
                    raise
                if self._leases is not None and not await self._leases.beat(
                    session, msg.heartbeat.status
                ):
                    why = "a newer session of the spoke at another hubd took its lease over"
                    return why
        finally:
            self._sessions.close(session, why)

    def _heartbeat(self, session: LinkSession, beat: link_service_pb2.LinkHeartbeat) -> None:
        at = commands.now()
        status = self._monitor.observe_status(session.spoke, beat.status, session.nonce, at)
        reply = commands.parse_reply(beat.status.payload)  # verified just above
        gap = session.heartbeat((reply.issue_time.seconds, reply.issue_time.nanos))
        self._monitor.observe_heartbeat(session.spoke, status, at)
        if self._metrics is not None:
            self._metrics.heartbeat(session.spoke, gap, session.max_gap_s)

    # -- Serve -----------------------------------------------------------------------------

    async def serve(
        self, requests: AsyncIterator[ServeIn], context: _Ctx
    ) -> AsyncIterator[ServeOut]:
        first = await _first(requests, self._sessions.cfg.hello_timeout_s, "open")
        if first.WhichOneof("kind") != "open":
            raise errors.InvalidCommandError("a serve stream starts with open")
        sgrpc.bind_signer(first.open.spoke, "serve stream")
        call = self._sessions.claim(first.open.call_id, first.open.spoke)
        log.debug("link_call_claimed", spoke=first.open.spoke, rpc=call.method)
        sent = link_service_pb2.LinkServeCall(method=call.method, request=call.request)
        sent.timeout.FromMilliseconds(max(round(call.remaining() * 1000), 1))
        yield ServeOut(call=sent)
        pump = asyncio.create_task(_pump(requests, call), name="link-serve")
        gone = asyncio.create_task(call.abandoned.wait())
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            failed = pump.exception()
            if isinstance(failed, errors.CommandError):
                raise failed


async def _pump(requests: AsyncIterator[ServeIn], call: PendingCall) -> None:
    """Hand the spoke's responses and status to the caller (waiting while its buffer is full)."""
    async for msg in requests:
        kind = msg.WhichOneof("kind")
        if kind == "response":
            await call.inbox.put(msg.response)
        elif kind == "status":
            await call.inbox.put(msg.status)
            return
        else:
            raise errors.InvalidCommandError("a serve stream opens once")
    ended = link_service_pb2.LinkServeStatus(
        code=grpc.StatusCode.UNAVAILABLE.value[0], message="the spoke ended the call unanswered"
    )
    await call.inbox.put(ended)


async def _first(requests: AsyncIterator[Any], timeout_s: float, what: str) -> Any:
    try:
        async with asyncio.timeout(timeout_s):
            return await anext(requests)
    except StopAsyncIteration:
        raise errors.InvalidCommandError(f"the stream ended before its {what}") from None
    except TimeoutError:
        raise errors.InvalidCommandError(f"no {what} within {timeout_s:g} s") from None


def _guarded(
    impl: Callable[[AsyncIterator[Any], _Ctx], AsyncIterator[Any]], request_cls: Any
) -> Callable[[AsyncIterator[bytes], _Ctx], AsyncIterator[Any]]:
    """Parse each request, check the caller's protocol and keep its TLS identity; a
    ``CommandError`` becomes its status, anything else INTERNAL."""

    async def parsed(raw: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async for item in raw:
            try:
                yield request_cls.FromString(item)
            except Exception as exc:
                raise errors.InvalidCommandError("a message is not valid protobuf") from exc

    async def handle(raw: AsyncIterator[bytes], context: _Ctx) -> AsyncIterator[Any]:
        remember_peer(context)
        try:
            version.check_peer_protocol(version.peer_protocol(context.invocation_metadata()))
            async for out in impl(parsed(raw), context):
                yield out
        except errors.CommandError as exc:
            log.info("link_stream_refused", code=exc.code.name, reason=exc.reason, why=exc.message)
            await _abort(context, sstatus.to_status(exc))
        except Exception:
            log.exception("link_stream_failed")
            await _abort(context, sstatus.internal_status())

    return handle


async def _abort(context: _Ctx, st: grpc.Status) -> None:
    abort: Callable[[grpc.Status], Any] = context.abort_with_status  # type: ignore[attr-defined]  # stubs lag grpcio
    await abort(st)
