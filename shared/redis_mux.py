"""One pipelined Redis connection for the spoke's hot path (issue 13): the admission script,
a status command's record read and the spawn script.

redis-py spends about as much Python per command as the command costs Redis: a connection
checked out of the pool and back under a lock, its observability hooks, a retry wrapper, a
timeout context, and a ``send`` syscall of its own for each command. Here every concurrent
caller shares one connection: commands are packed by hiredis, queued, and written together
once per loop iteration (one ``send`` for all the calls that arrived in it); one reader task
parses the replies with hiredis and hands each to its caller in order (Redis answers a
connection's commands in the order they came).

The connection is redis-py's own (``ConnectionPool.make_connection``: the same URL, user,
password, TLS and timeouts as the spoke's command client), so every error reply is the
exception redis-py would raise (``NoScriptError`` ...). Limits and failures:

* a call not answered within ``op_timeout_s`` fails with ``TimeoutError`` and takes the
  connection down (answers arrive in order, so every call behind it is stuck too); the next
  call connects afresh;
* a lost connection fails every call on it with ``ConnectionError``; a call is tried again
  ``retries`` times on a new connection after a short back-off, as the command client's
  ``Retry`` does (spoke/backend.py ``reconnecting``: every script here is safe to repeat).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RETRIES", "RedisMux", "ScriptRef"]

RETRIES = 3
"""Tries of a call again on a fresh connection after its connection failed."""

_BACKOFF_S = (0.05, 0.2, 1.0)

READ_CHUNK = 1 << 16

Command = Sequence[object]


@dataclass(frozen=True, slots=True)
class ScriptRef:
    """A Lua script by its SHA-1, with its text for a ``SCRIPT LOAD`` after NOSCRIPT."""

    sha: str
    text: str

    @classmethod
    def of(cls, script: Any) -> ScriptRef:
        """From a redis-py ``Script`` (``register_script``): its sha and text."""
        text = script.script
        return cls(script.sha, text.decode() if isinstance(text, bytes) else text)


class _Link:
    """One connected socket: queued writes, replies handed out in order."""

    def __init__(self, conn: Any, op_timeout_s: float) -> None:
        self.conn = conn
        self.reader: asyncio.StreamReader = conn._reader
        self.writer: asyncio.StreamWriter = conn._writer
        self.timeout_s = op_timeout_s
        self.loop = asyncio.get_running_loop()
        self.parser = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[bytes] = []
        self.flush_at: asyncio.Handle | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.broken: Exception | None = None
        self.task = asyncio.create_task(self._read(), name="redis-mux-reader")

    def send(self, commands: Sequence[Command]) -> list[asyncio.Future[Any]]:
        """Queue ``commands``; their replies (error replies as exception values) come to
        the futures returned, in order."""
        if self.broken is not None:
            raise RedisConnectionError(f"redis connection lost: {self.broken}")
        packed = [hiredis.pack_command(tuple(cmd)) for cmd in commands]  # type: ignore[arg-type]  # hiredis's stub types a 1-tuple
        deadline = self.loop.time() + self.timeout_s
        futures = []
        for data in packed:
            self.out.append(data)
            fut = self.loop.create_future()
            self.waiting.append((fut, deadline))
            futures.append(fut)
        if self.flush_at is None:
            self.flush_at = self.loop.call_soon(self._flush)
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(deadline, self._check)
        return futures

    def _flush(self) -> None:
        self.flush_at = None
        if self.out and self.broken is None:
            data, self.out = b"".join(self.out), []
            try:
                self.writer.write(data)
            except (OSError, RuntimeError) as exc:
                self.fail(RedisConnectionError(f"redis write failed: {exc}"))

    def _check(self) -> None:
        """The oldest call's deadline: past it, the connection is stuck (answers in order)."""
        self.watchdog = None
        if not self.waiting or self.broken is not None:
            return
        deadline = self.waiting[0][1]
        if deadline <= self.loop.time():
            self.fail(RedisTimeoutError(f"redis did not answer within {self.timeout_s:g} s"))
            return
        self.watchdog = self.loop.call_at(deadline, self._check)

    async def _read(self) -> None:
        try:
            while self._answer(await self.reader.read(READ_CHUNK)):
                pass
        except asyncio.CancelledError:
            self.fail(RedisConnectionError("redis connection closed"))
            raise
        except Exception as exc:  # every caller on the link is told
            self.fail(
                exc
                if isinstance(exc, RedisConnectionError | RedisTimeoutError)
                else RedisConnectionError(f"redis connection failed: {exc}")
            )

    def _answer(self, data: bytes) -> bool:
        """Hand the replies in ``data`` to their callers; False at the end of the stream."""
        if not data:
            self.fail(RedisConnectionError("redis closed the connection"))
            return False
        self.parser.feed(data)
        while (reply := self.parser.gets()) is not False:
            if not self.waiting:
                raise InvalidResponse("a reply no command asked for")
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_result(reply)
        return True

    def fail(self, exc: Exception) -> None:
        """Take the link down: every waiting call gets ``exc``."""
        if self.broken is None:
            self.broken = exc
        while self.waiting:
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc)
        self.out = []
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        with contextlib.suppress(Exception):
            self.conn._close()  # redis-py's own silent close: the writer, and its references
        if self.task is not asyncio.current_task():
            self.task.cancel()


class RedisMux:
    """Calls on one shared, pipelined connection of ``pool``'s settings. Create inside the
    running loop; ``close()`` when done."""

    def __init__(
        self, pool: aioredis.ConnectionPool, op_timeout_s: float, retries: int = RETRIES
    ) -> None:
        self._pool = pool
        self._timeout_s = op_timeout_s
        self._retries = retries
        self._link: _Link | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()
        self.connects = 0
        """Connections made so far (a test's view of reconnects)."""

    @classmethod
    def of(cls, client: aioredis.Redis, op_timeout_s: float, retries: int = RETRIES) -> RedisMux:
        """A mux with the settings of ``client``'s pool."""
        return cls(client.connection_pool, op_timeout_s, retries)

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.fail(RedisConnectionError("redis mux closed"))
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await link.task

    async def _connected(self) -> _Link:
        link = self._link
        if link is not None and link.broken is None:
            return link
        async with self._connecting:
            link = self._link
            if link is not None and link.broken is None:
                return link
            conn = self._pool.make_connection()  # type: ignore[no-untyped-call]  # redis-py: untyped
            try:
                async with asyncio.timeout(self._timeout_s):
                    await conn.connect()
            except TimeoutError as exc:
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                raise RedisTimeoutError("redis connect timed out") from exc
            self._link = link = _Link(conn, self._timeout_s)
            self.connects += 1
            return link

    async def execute(self, *commands: Command) -> list[Any]:
        """The replies of ``commands``, written together and answered in one round trip;
        an error reply is its exception, as a value. A call whose connection failed is
        tried again on a new one (``retries`` times, ``RETRIES`` unless told)."""
        for attempt in range(self._retries + 1):
            try:
                link = await self._connected()
                futures = link.send(commands)
                return [await fut for fut in futures]
            except (RedisConnectionError, RedisTimeoutError, OSError):
                if attempt == self._retries:
                    raise
                await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
        raise AssertionError("unreachable")

    async def script(
        self, script: ScriptRef, keys: Sequence[object], args: Sequence[object], *after: Command
    ) -> list[Any]:
        """EVALSHA of ``script`` and then ``after``, in one round trip; a NOSCRIPT loads the
        script and sends them again. Replies as ``execute`` gives them."""
        call = ("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = await self.execute(call, *after)
        if isinstance(replies[0], NoScriptError):
            await self.checked(("SCRIPT", "LOAD", script.text))
            replies = await self.execute(call, *after)
        return replies

    async def checked_script(
        self, script: ScriptRef, keys: Sequence[object], args: Sequence[object], *after: Command
    ) -> list[Any]:
        """``script``, raising the first error reply."""
        replies = await self.script(script, keys, args, *after)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def checked(self, *commands: Command) -> list[Any]:
        """``execute``, raising the first error reply."""
        replies = await self.execute(*commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
