"""Connect-mode spokes as the hub holds them: one control session per spoke, its calls.

A connect-mode spoke dials the hub (docs/protocol.md "Connect mode"). :class:`LinkSessions`
keeps, per spoke, the :class:`LinkSession` of its open Control stream (hub/link_service.py
opens and closes them) and every :class:`PendingCall`: a SpokeService call the hub announced
on the Control stream and the spoke serves on a Serve stream of its own.

:class:`ConnectStub` has the callable surface of the generated ``SpokeServiceStub`` that
hub/relay.py uses (``await stub.SpawnAgent(request, timeout=..., metadata=...)``,
``stub.WatchAgent(...)`` to iterate and ``cancel()``), carried over the session, with the
same errors: a ``grpc.aio.AioRpcError`` with the spoke's status, DEADLINE_EXCEEDED when the
call's time is up, UNAVAILABLE when the session ends mid-call. A spoke without a session
fails at once with ``SpokeDisconnectedError`` (UNAVAILABLE, SPOKE_DISCONNECTED), never
waiting a call timeout.

Bounds on what a spoke can make the hub hold: ``link_max_pending_calls`` calls per spoke
(more: RESOURCE_EXHAUSTED, LINK_BUSY), ``link_call_buffer`` response messages per call (the
Serve stream then waits: gRPC flow control pushes back on the spoke), one session per spoke
(a new hello replaces the old session), and hello nonces only for twice the clock skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from hubspoke import errors
from hubspoke.gen.federation.v1 import link_service_pb2
from hubspoke.link_protocol import (
    LinkBusyError,
    LinkRefusedError,
    SpokeDisconnectedError,
    SpokeMethod,
    rpc_error_of,
    spoke_method,
)

__all__ = ["ConnectStub", "LinkConfig", "LinkSession", "LinkSessions", "PendingCall"]

log = structlog.get_logger("hubspoke.hub.link")

Item = bytes | link_service_pb2.LinkServeStatus
"""What a Serve stream delivers to its caller: a response message's bytes, or the end."""
MAX_NONCES: Final = 100_000
"""Hello nonces remembered at most (older ones are forgotten first)."""


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """The hub's limits for connect-mode spokes (HubConfig ``link_*``)."""

    hello_timeout_s: float = 10.0
    """How long a new Control (or Serve) stream may take to send its first message."""
    max_pending_calls: int = 256
    """Calls in flight to one connect-mode spoke; more fail with RESOURCE_EXHAUSTED."""
    call_buffer: int = 16
    """Response messages of one call the hub holds before it stops reading the Serve stream."""
    missed_heartbeats: int = 3
    """Heartbeat intervals without one after which the hub ends the session (DISCONNECTED)."""
    min_heartbeat_s: float = 0.2
    """The shortest heartbeat interval the hub accepts (a spoke's is raised to it)."""
    max_heartbeat_s: float = 60.0
    """The longest heartbeat interval the hub accepts (a spoke's is lowered to it)."""
    max_skew: dt.timedelta = dt.timedelta(seconds=30)
    """How far a hello's issue_time may be from the hub's clock."""


class PendingCall:
    """One announced call: the request the Serve stream will carry, and what came back."""

    __slots__ = ("abandoned", "call_id", "claimed", "deadline", "inbox", "method", "request")

    def __init__(self, method: str, request: bytes, timeout_s: float, buffer: int) -> None:
        self.call_id = secrets.token_hex(16)
        self.method = method
        self.request = request
        self.deadline = time.monotonic() + timeout_s
        self.inbox: asyncio.Queue[Item] = asyncio.Queue(buffer)
        self.claimed = False
        self.abandoned = asyncio.Event()
        """Set when the caller is gone (done, timed out, cancelled): the Serve stream ends."""

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    async def next(self, closed: asyncio.Event) -> Item:
        """The next item, waiting until the deadline or the session's end.

        Raises:
            TimeoutError: the call's deadline passed.
            ConnectionError: the session ended.
        """
        if not self.inbox.empty():
            return self.inbox.get_nowait()
        getter = asyncio.ensure_future(self.inbox.get())
        closer = asyncio.ensure_future(closed.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, closer}, timeout=self.remaining(), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closer.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if closer in done:
            raise ConnectionError("the spoke's session ended")
        raise TimeoutError


class LinkSession:
    """One spoke's open Control stream."""

    def __init__(self, spoke: str, interval_s: float) -> None:
        self.spoke = spoke
        self.nonce = secrets.token_bytes(24)
        """Every heartbeat's status is bound to it (request_digest = SHA-256 of it)."""
        self.interval_s = interval_s
        self.opened = time.monotonic()
        self.closed = asyncio.Event()
        self.pending: dict[str, PendingCall] = {}
        self.last_issue: tuple[int, int] = (0, 0)
        """The issue_time (seconds, nanos) of the last heartbeat's status: each is later."""
        self.last_heartbeat: float | None = None
        """time.monotonic() of the last heartbeat."""
        self.max_gap_s = 0.0
        """The longest time between two heartbeats of this session."""
        self._outbox: asyncio.Queue[link_service_pb2.SpokeLinkServiceControlResponse] = (
            asyncio.Queue()
        )

    def announce(self, call: PendingCall) -> None:
        """Queue the call's announcement (the number of calls bounds the queue)."""
        self._outbox.put_nowait(
            link_service_pb2.SpokeLinkServiceControlResponse(
                call=link_service_pb2.LinkCall(call_id=call.call_id)
            )
        )

    async def next_outgoing(self) -> link_service_pb2.SpokeLinkServiceControlResponse | None:
        """The next message for the Control stream; None once the session is closed."""
        while not self.closed.is_set():
            if not self._outbox.empty():
                return self._outbox.get_nowait()
            getter = asyncio.ensure_future(self._outbox.get())
            closer = asyncio.ensure_future(self.closed.wait())
            try:
                await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closer.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()
        return None

    def heartbeat(self, issue: tuple[int, int]) -> float:
        """Record a heartbeat whose status was issued at ``issue``; return the gap since the
        previous one (0 for the first).

        Raises:
            hubspoke.errors.InvalidCommandError: not later than the previous heartbeat's.
        """
        if issue <= self.last_issue:
            raise errors.InvalidCommandError("a heartbeat's status is not newer than the last")
        self.last_issue = issue
        now = time.monotonic()
        gap = 0.0 if self.last_heartbeat is None else now - self.last_heartbeat
        self.last_heartbeat = now
        self.max_gap_s = max(self.max_gap_s, gap)
        return gap


class LinkSessions:
    """Every connect-mode spoke's session on this hub, and the calls in flight to them."""

    def __init__(self, cfg: LinkConfig) -> None:
        self.cfg = cfg
        self._sessions: dict[str, LinkSession] = {}
        self._calls: dict[str, tuple[LinkSession, PendingCall]] = {}
        self._nonces: dict[tuple[str, bytes], float] = {}
        self._idle = asyncio.Event()
        """Set while no call is in flight."""
        self._idle.set()
        self.on_change: Callable[[str, LinkSession | None], None] | None = None
        """Told when a spoke's session opens (the session) or closes (None)."""

    def get(self, spoke: str) -> LinkSession | None:
        found = self._sessions.get(spoke)
        return found if found is not None and not found.closed.is_set() else None

    def names(self) -> Sequence[str]:
        """The spokes with an open session."""
        return [n for n, s in self._sessions.items() if not s.closed.is_set()]

    def claim_nonce(self, spoke: str, nonce: bytes) -> None:
        """Accept a hello's nonce once within twice the clock skew.

        Raises:
            hubspoke.errors.NonceReusedError: seen before.
        """
        now = time.monotonic()
        keep = 2 * self.cfg.max_skew.total_seconds()
        if len(self._nonces) >= MAX_NONCES or (
            self._nonces and next(iter(self._nonces.values())) < now - keep
        ):
            self._nonces = {k: t for k, t in self._nonces.items() if t >= now - keep}
            while len(self._nonces) >= MAX_NONCES:
                del self._nonces[next(iter(self._nonces))]
        if (spoke, nonce) in self._nonces:
            raise errors.NonceReusedError("this hello was already used")
        self._nonces[(spoke, nonce)] = now

    def open(self, spoke: str, interval_s: float) -> LinkSession:
        """A new session for ``spoke``; an older one of the same spoke is closed."""
        interval = min(max(interval_s, self.cfg.min_heartbeat_s), self.cfg.max_heartbeat_s)
        old = self._sessions.get(spoke)
        if old is not None:
            self.close(old, "replaced by a new session")
        session = LinkSession(spoke, interval)
        self._sessions[spoke] = session
        log.info("link_session_opened", spoke=spoke, heartbeat_interval_s=interval)
        if self.on_change is not None:
            self.on_change(spoke, session)
        return session

    def close(self, session: LinkSession, why: str) -> None:
        """End a session: its pending calls fail with UNAVAILABLE; idempotent."""
        if session.closed.is_set():
            return
        session.closed.set()
        for call in session.pending.values():
            call.abandoned.set()
        if self._sessions.get(session.spoke) is session:
            del self._sessions[session.spoke]
            log.info("link_session_closed", spoke=session.spoke, why=why)
            if self.on_change is not None:
                self.on_change(session.spoke, None)

    def close_all(self) -> None:
        for session in list(self._sessions.values()):
            self.close(session, "hub stopping")

    async def idle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until no call is in flight to any spoke."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()

    def claim(self, call_id: str, spoke: str) -> PendingCall:
        """The announced call a Serve stream of ``spoke`` names; each is served once.

        Raises:
            LinkRefusedError: no such call in flight to that spoke, or already served.
        """
        found = self._calls.get(call_id)
        if found is None or found[0].spoke != spoke or found[1].claimed:
            raise LinkRefusedError(f"no call {call_id[:40]!r} is waiting for spoke {spoke[:64]}")
        found[1].claimed = True
        return found[1]

    async def exchange(
        self, spoke: str, method: SpokeMethod, request: Message, timeout_s: float | None
    ) -> AsyncIterator[Message]:
        """Announce one call to ``spoke`` and yield its response messages.

        Raises:
            SpokeDisconnectedError: no open session (at once).
            LinkBusyError: too many calls in flight to it (at once).
            grpc.aio.AioRpcError: the spoke's non-OK status; DEADLINE_EXCEEDED when the
                time is up; UNAVAILABLE when the session ends first.
        """
        session = self.get(spoke)
        if session is None:
            raise SpokeDisconnectedError(f"spoke {spoke} is not connected", spoke=spoke)
        if len(session.pending) >= self.cfg.max_pending_calls:
            raise LinkBusyError(
                f"spoke {spoke} already has {self.cfg.max_pending_calls} calls in flight "
                "(link_max_pending_calls)",
                spoke=spoke,
            )
        timeout = 3600.0 if timeout_s is None else timeout_s
        call = PendingCall(method.name, request.SerializeToString(), timeout, self.cfg.call_buffer)
        session.pending[call.call_id] = call
        self._calls[call.call_id] = (session, call)
        self._idle.clear()
        try:
            session.announce(call)
            while True:
                try:
                    item = await call.next(session.closed)
                except TimeoutError:
                    raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline") from None
                except ConnectionError:
                    raise _rpc_error(grpc.StatusCode.UNAVAILABLE, "session ended") from None
                if isinstance(item, link_service_pb2.LinkServeStatus):
                    if item.code != grpc.StatusCode.OK.value[0]:
                        raise rpc_error_of(item)
                    return
                try:
                    yield method.response.FromString(item)
                except DecodeError:
                    raise _rpc_error(grpc.StatusCode.INTERNAL, "undecodable response") from None
        finally:
            call.abandoned.set()
            session.pending.pop(call.call_id, None)
            self._calls.pop(call.call_id, None)
            if not self._calls:
                self._idle.set()


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


class ConnectStreamCall:
    """A server-streaming call over a session, iterated like grpc.aio's (and cancellable)."""

    def __init__(self, responses: AsyncIterator[Message]) -> None:
        self._responses = responses

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._responses

    def cancel(self) -> bool:
        """End the call (the Serve stream closes, the spoke stops serving it)."""
        aclose = getattr(self._responses, "aclose", None)
        if aclose is not None:
            task = asyncio.ensure_future(aclose())
            task.add_done_callback(_ignore_result)
        return True


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Exchanger(Protocol):
    """Carries a call to a spoke without a session here (hub/forward_stub.py ``Forwarder``)."""

    def exchange(
        self, spoke: str, method: SpokeMethod, request: Message, timeout_s: float | None
    ) -> AsyncIterator[Message]: ...


class ConnectStub:
    """The SpokeService stub surface hub/relay.py uses, over one spoke's session: this
    hubd's, or (with ``forwarder``) the session another hubd holds (docs/protocol.md
    "Several hubds")."""

    def __init__(
        self, sessions: LinkSessions, spoke: str, forwarder: Exchanger | None = None
    ) -> None:
        self._sessions = sessions
        self._spoke = spoke
        self._forwarder = forwarder

    def _exchange(
        self, method: SpokeMethod, request: Message, timeout: float | None
    ) -> AsyncIterator[Message]:
        if self._forwarder is not None and self._sessions.get(self._spoke) is None:
            return self._forwarder.exchange(self._spoke, method, request, timeout)
        return self._sessions.exchange(self._spoke, method, request, timeout)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            method = spoke_method(name)
        except errors.InvalidCommandError as exc:
            raise AttributeError(name) from exc
        if method.streaming:
            return functools.partial(self._stream, method)
        return functools.partial(self._unary, method)

    async def _unary(
        self,
        method: SpokeMethod,
        request: Message,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # the generated stub's deadline argument
        **_: Any,
    ) -> Message:
        answer: Message | None = None
        responses = self._exchange(method, request, timeout)
        async for response in responses:
            answer = response if answer is None else answer
        if answer is None:
            raise _rpc_error(grpc.StatusCode.INTERNAL, "the spoke answered no message")
        return answer

    def _stream(
        self, method: SpokeMethod, request: Message, *, timeout: float | None = None, **_: Any
    ) -> ConnectStreamCall:
        return ConnectStreamCall(self._exchange(method, request, timeout))


def refuse_unknown(spoke: str) -> LinkRefusedError:
    """The error for a hello of a spoke this hub does not link in connect mode."""
    return LinkRefusedError(f"spoke {spoke[:64]} is not a connect-mode spoke of this hub")
