"""One reader per process for every watched event stream, fanning entries out to watchers.

A blocking ``XREAD`` holds its Redis connection for as long as it waits (PITFALLS), so a
connection per watcher let enough watchers take every pooled connection, and with them every
other call and the worker's state writes. Here a process reads all watched streams with one
``XREAD BLOCK`` on a connection of its own, and hands each entry to the subscriptions of its
stream through bounded buffers. Delivery never waits on a subscriber: one that falls more
than ``SUBSCRIBER_BUFFER`` entries behind is marked overflowed and its buffer dropped; it
catches up by reading the stream itself (spoke/records.py), so nothing is lost and nobody
else is slowed.

A newly watched stream joins the next read; an entry on this reader's wake stream ends the
read in progress so that it joins at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from hubspoke.redis_access import RedisAccess, access

from .backend import reconnecting
from .keys import SpokeKeys

log = structlog.get_logger("hubspoke.spoke.fanout")

READ_BLOCK_MS = 2000
"""How long one XREAD of all watched streams waits for an entry."""

READ_COUNT = 200
"""Most entries one read takes from each stream."""

SUBSCRIBER_BUFFER = 512
"""Entries held for one subscription before it is marked overflowed."""

WAKE_TTL_MS = 60_000
"""The wake stream expires this long after the last wake."""

Entry = tuple[bytes, dict[bytes, bytes]]
"""One stream entry as redis-py returns it: (id, fields)."""


class Subscription:
    """Entries of one stream after a position, for one watcher."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: deque[Entry] = deque()
        self._ready = asyncio.Event()
        self._overflowed = False

    def deliver(self, entries: list[Entry]) -> None:
        """Called by the reader; never waits."""
        if self._overflowed:
            return
        if len(self._entries) + len(entries) > SUBSCRIBER_BUFFER:
            self._overflowed = True
            self._entries.clear()
        else:
            self._entries.extend(entries)
        self._ready.set()

    def take_overflow(self) -> bool:
        """Whether entries were dropped since the last call (the watcher must read the
        stream itself from where it is)."""
        overflowed, self._overflowed = self._overflowed, False
        return overflowed

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    async def next(self, timeout_s: float) -> list[Entry]:
        """The entries delivered so far, waiting up to ``timeout_s`` for a first one; empty
        on a timeout or an overflow."""
        if not self._entries and not self._overflowed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
        self._ready.clear()
        out = list(self._entries)
        self._entries.clear()
        return out


class StreamFanout:
    """The process's watch reader. ``subscribe`` from any task; ``close()`` at shutdown."""

    def __init__(
        self, redis: str | RedisAccess, keys: SpokeKeys, wake_client: aioredis.Redis
    ) -> None:
        # One connection, for the reader alone; its socket outlasts the longest block.
        target = access(redis)
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            target.url,
            single_connection_client=True,
            socket_timeout=READ_BLOCK_MS / 1000 + 5,
            socket_connect_timeout=5,
            **reconnecting(),
            **target.client_kwargs(),
        )
        self._wake_client = wake_client
        self._wake_key = keys.watch_wake(uuid.uuid4().hex[:12])
        self._wake_cursor = "0-0"
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, str] = {}
        self._reading: frozenset[str] = frozenset()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def streams(self) -> int:
        """Streams being read now."""
        return len(self._cursors)

    @asynccontextmanager
    async def subscribe(self, key: str, after_seq: int) -> AsyncIterator[Subscription]:
        """Entries of stream ``key`` from now on (from after ``after_seq`` if the stream is
        not read yet). Entries before the subscription are the watcher's to read."""
        if self._closed:
            raise RuntimeError("the watch reader is closed")
        sub = Subscription(key)
        subs = self._subs.setdefault(key, set())
        subs.add(sub)
        if key not in self._cursors:
            self._cursors[key] = f"{after_seq}-0"
        self._start()
        try:
            if key not in self._reading:
                await self._wake()
            yield sub
        finally:
            subs.discard(sub)
            if not subs:
                self._subs.pop(key, None)
                self._cursors.pop(key, None)

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    def _start(self) -> None:
        self._changed.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="watch-reader")
            self._task.add_done_callback(_log_crash)

    async def _wake(self) -> None:
        """End the read in progress, so that it starts again with the new stream. Best
        effort: without it the stream joins within ``READ_BLOCK_MS``."""
        pipe = self._wake_client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
        pipe.pexpire(self._wake_key, WAKE_TTL_MS)
        with contextlib.suppress(RedisError, OSError):
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            if not self._cursors:
                self._changed.clear()
                await self._changed.wait()
                continue
            streams: dict[Any, Any] = dict(self._cursors)
            self._reading = frozenset(streams)
            streams[self._wake_key] = self._wake_cursor
            try:
                got: Any = await self._redis.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
            except (RedisError, OSError) as exc:
                self._reading = frozenset()
                log.warning("watch_reader_retrying", error=type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for raw_key, entries in got or []:
                self._dispatch(raw_key.decode(), entries)

    def _dispatch(self, key: str, entries: list[Entry]) -> None:
        if not entries:
            return
        last = entries[-1][0].decode()
        if key == self._wake_key:
            self._wake_cursor = last
            return
        if key not in self._cursors:
            return  # nobody watches it any more
        self._cursors[key] = last
        for sub in list(self._subs.get(key, ())):
            sub.deliver(entries)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("watch_reader_crashed", exc_info=task.exception())
