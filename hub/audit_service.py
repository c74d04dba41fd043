"""Every HubService call into the audit log: the command as received and what was answered.

:class:`Audited` stands in front of the hub's servicer. Each call is one entry, written
before the answer goes back (so an answered command is always on record):

* accepted: outcome ``OK``, the client's SignedEnvelope exactly as received and the signed
  replies handed back (a watch: its first event; the stream is one entry, plus one if it
  fails later);
* refused after the client's signature verified: the code and reason, and the envelope;
* refused before (bad signature, unknown key, malformed): only the envelope's size and
  SHA-256, with the principal as claimed, and at most ``unverified_per_s`` such entries per
  second per hubd, so that nobody without a key can fill the log.

Signed bytes longer than ``max_bytes_kept`` are replaced by their size and digest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from . import call_writes
from .audit import AuditLog
from .audit_chain import Entry, join_replies

__all__ = ["Audited"]

log = structlog.get_logger("hubspoke.hub.audit")

_Ctx = grpc.aio.ServicerContext[Any, Any]
_UNVERIFIED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT})
"""Refusals that may come before the signature was checked: the bytes are not kept."""
SECRET_REPLIES = frozenset({"CreateEnrolment"})
"""RPCs whose replies carry a secret (an unused enrolment token): only their size and digest
are kept, so reading the audit log never yields a token (docs/security.md §22)."""


class Audited:
    """A HubService servicer that records every call in the audit log, then answers."""

    def __init__(self, inner: object, audit: AuditLog, unverified_per_s: float = 10.0) -> None:
        self._inner = inner
        self._audit = audit
        self._rate = unverified_per_s
        self._tokens = unverified_per_s
        self._at = time.monotonic()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        impl = getattr(self._inner, name)
        if not name[:1].isupper():
            return impl  # type: ignore[no-any-return]
        if _is_stream(impl):
            return self._stream(name, impl)
        return self._unary(name, impl)

    def _unary(
        self, rpc: str, impl: Callable[[Message, _Ctx], Awaitable[Message]]
    ) -> Callable[[Message, _Ctx], Awaitable[Message]]:
        async def call(request: Message, context: _Ctx) -> Message:
            # The call's own writes and reply checks ride on its entry (hub/call_writes.py).
            with call_writes.collecting() as pending:
                try:
                    response = await impl(request, context)
                except errors.CommandError as exc:
                    failure = await _rechecked(pending, exc)
                    await self._note(rpc, request, (), failure, pending.take())
                    raise failure from (None if failure is exc else exc)
                replies = _replies(response)
                try:
                    await self._note(rpc, request, replies, None, pending.take(), pending.revision)
                except call_writes.MembershipMovedError:  # verify the replies again first
                    try:
                        await pending.recheck()
                    except errors.CommandError as exc:
                        await self._note(rpc, request, (), exc)
                        raise
                    await self._note(rpc, request, replies, None)
                return response

        return call

    def _stream(
        self, rpc: str, impl: Callable[[Message, _Ctx], AsyncIterator[Message]]
    ) -> Callable[[Message, _Ctx], AsyncIterator[Message]]:
        async def call(request: Message, context: _Ctx) -> AsyncIterator[Message]:
            first = True
            try:
                async for item in impl(request, context):
                    if first:
                        first = False
                        await self._note(rpc, request, _replies(item), None)
                    yield item
            except errors.CommandError as exc:
                await self._note(rpc, request, (), exc)
                raise
            if first:  # a stream that ended without an event
                await self._note(rpc, request, (), None)

        return call

    async def _note(
        self,
        rpc: str,
        request: Message,
        replies: Sequence[bytes],
        failure: errors.CommandError | None,
        writes: tuple[call_writes.Write, ...] = (),
        revision: int | None = None,
    ) -> None:
        env: command_pb2.SignedEnvelope | None = getattr(request, "command", None)
        raw = env.SerializeToString() if env is not None else b""
        cmd = _command(env)
        detail: dict[str, object] = {}
        keep_request = True
        if failure is None:
            outcome = "OK"
        else:
            outcome = f"{failure.code.name} {failure.reason}".strip()
            detail["message"] = failure.message[:512]
            if failure.code in _UNVERIFIED:
                keep_request = False
                if not self._take():
                    await call_writes.write_alone(writes)
                    return  # over the rate for unverified refusals: counted in metrics only
                detail["claimed"] = True
        cfg = self._audit.config
        request_kept = raw if keep_request and len(raw) <= cfg.max_bytes_kept else b""
        if raw and not request_kept:
            detail["request"] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        joined = join_replies(replies)
        if len(joined) > cfg.max_bytes_kept or (joined and rpc in SECRET_REPLIES):
            detail["replies"] = {
                "count": len(replies),
                "bytes": len(joined),
                "sha256": hashlib.sha256(joined).hexdigest(),
            }
            joined = b""
        agent, spoke = _about(cmd, replies, cfg.hub_name)
        entry = Entry(
            kind="command",
            action=rpc,
            outcome=outcome,
            principal=cmd.issuer if cmd else "",
            command_id=cmd.command_id if cmd else "",
            audience=cmd.audience if cmd else "",
            agent=agent,
            spoke=spoke,
            detail=json.dumps(detail, sort_keys=True, separators=(",", ":")) if detail else "{}",
            request=request_kept,
            replies=joined,
        )
        try:
            await self._audit.record(entry, writes, revision)
        except errors.CommandError:
            if failure is None:
                raise  # an accepted command is answered only once it is on record
            log.warning("audit_refusal_not_recorded", rpc=rpc)

    def _take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


async def _rechecked(
    pending: call_writes.Collector, failure: errors.CommandError
) -> errors.CommandError:
    """A call that failed after a relayed reply it left unchecked (hub/call_writes.py): that
    reply's check comes first, as it did when the hub checked before going on."""
    if not pending.rechecks:
        return failure
    try:
        await pending.recheck()
    except errors.CommandError as exc:
        return exc
    return failure


def _is_stream(impl: object) -> bool:
    import inspect

    return inspect.isasyncgenfunction(getattr(impl, "__func__", impl))


def _replies(response: Message) -> list[bytes]:
    out: list[bytes] = []
    one = getattr(response, "reply", None)
    if isinstance(one, command_pb2.SignedEnvelope) and one.ByteSize():
        out.append(one.SerializeToString())
    many = getattr(response, "replies", None)
    if many is not None:
        out.extend(r.SerializeToString() for r in many)
    return out


def _command(env: command_pb2.SignedEnvelope | None) -> command_pb2.Command | None:
    if env is None:
        return None
    try:
        return command_pb2.Command.FromString(env.payload)
    except DecodeError:
        return None


def _about(cmd: command_pb2.Command | None, replies: Sequence[bytes], hub: str) -> tuple[str, str]:
    """The agent and spoke an entry is about: from the command, else from the first reply."""
    agent = spoke = ""
    if cmd is not None:
        body = cmd.WhichOneof("body")
        named = getattr(getattr(cmd, body), "agent", "") if body else ""
        if isinstance(named, str) and named:
            agent = named
            if named.startswith("spokes/"):
                parts = named.split("/")
                if len(parts) == 4:
                    spoke, agent = parts[1], parts[3]
        if cmd.audience and cmd.audience != hub:
            spoke = spoke or cmd.audience
    if replies:
        try:
            env = command_pb2.SignedEnvelope.FromString(replies[0])
            reply = command_pb2.Reply.FromString(env.payload)
        except DecodeError:
            return agent, spoke
        if reply.WhichOneof("result") == "agent":
            agent = agent or reply.agent.agent_id
            spoke = spoke or reply.agent.spoke
        if not spoke and reply.responder != hub:
            spoke = reply.responder
    return agent, spoke
