"""The event feed of one spoke: every agent's state changes, read after a cursor.

Each script that changes an agent's state (spoke/records_lua.py, spoke/kills.py) appends the
change to the spoke's feed stream in the same step (``records_lua.FEED``), so no change is
missed. The stream's ids are ``n-0`` with ``n`` a counter of its own, from 1: the cursor is
that number, and entries are contiguous, so a jump in the numbers is exactly the entries the
cap (``feed_maxlen``) trimmed away. A reader is told of such a gap with a ``gap`` item, and so
is one whose cursor is ahead of the feed (the spoke's Redis was reset): it then reads from the
oldest entry kept.

``follow`` reads stored entries after the cursor, then (``live``) new ones through the process's
watch reader (spoke/fanout.py), holding no Redis connection while it waits, with a heartbeat
carrying the cursor every ``heartbeat_s`` of silence; without ``live`` it ends with one
heartbeat, the position it reached.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from hubspoke import aio

from .backend import backend
from .fanout import StreamFanout
from .keys import SpokeKeys

FEED_IDLE_S = 1.0
"""How long a live follower waits for a new entry before it looks again."""

FEED_READ_COUNT = 500
"""Stored entries one read takes."""


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One item of the feed as a follower yields it: ``event``, ``heartbeat`` or ``gap``."""

    kind: str
    cursor: int
    agent_id: str = ""
    owner: str = ""
    state: str = ""
    reason: str = ""
    time_ms: int = 0
    seq: int = 0
    """The event's sequence number in the agent's own stream."""
    detail: str = ""


FeedFilter = Callable[[FeedItem], bool]
"""Which events a follower sends (heartbeats and gaps always go)."""


def parse_entries(rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> list[FeedItem]:
    """Feed stream entries (id ``n-0``, fields) as event items."""
    out: list[FeedItem] = []
    for entry_id, data in rows:
        f = {k.decode(): v.decode("utf-8", "replace") for k, v in data.items()}
        out.append(
            FeedItem(
                kind="event",
                cursor=int(entry_id.decode().split("-")[0]),
                agent_id=f.get("agent_id", ""),
                owner=f.get("owner", ""),
                state=f.get("state", ""),
                reason=f.get("reason", ""),
                time_ms=int(f.get("time", "0") or 0),
                seq=int(f.get("seq", "0") or 0),
            )
        )
    return out


class Feed:
    """The feed of one spoke, on a command client (short calls) and the watch reader."""

    def __init__(self, redis: aioredis.Redis, keys: SpokeKeys, fanout: StreamFanout) -> None:
        self.redis = redis
        self.keys = keys
        self.fanout = fanout

    @backend
    async def configure(self, cap: int) -> None:
        """Store the cap the scripts trim the feed to (``feed_maxlen``)."""
        await self.redis.hset(self.keys.feed_meta, "cap", str(cap))

    @backend
    async def last(self) -> int:
        """The cursor of the newest entry written (0: none yet)."""
        raw = await self.redis.hget(self.keys.feed_meta, "seq")
        return int(raw or 0)

    @backend
    async def read(self, after: int, count: int = FEED_READ_COUNT) -> list[FeedItem]:
        """Stored entries after ``after`` (at most ``count``); never blocks."""
        rows: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(  # type: ignore[assignment]  # bytes: decode_responses is off
            self.keys.feed, min=f"({after}-0", max="+", count=count
        )
        return parse_entries(rows)

    async def follow(
        self, after: int, *, live: bool, heartbeat_s: float, keep: FeedFilter | None = None
    ) -> AsyncGenerator[FeedItem, None]:
        """Items after cursor ``after`` (0: from the oldest kept), as the module says."""
        last = await self.last()
        if after > last:
            yield FeedItem(
                kind="gap",
                cursor=0,
                detail=f"cursor {after} is ahead of this spoke's feed (at {last}): its data "
                "was reset; sending from the oldest entry kept",
            )
            after = 0
        if not live:
            while batch := await self.read(after):
                for item in self._checked(after, batch, keep):
                    yield item
                after = batch[-1].cursor
            yield FeedItem(kind="heartbeat", cursor=after)
            return
        beat = time.monotonic()
        async with self.fanout.subscribe(self.keys.feed, after) as sub:
            catch_up = True  # first the entries stored before the subscription
            while True:
                if sub.take_overflow() or catch_up:
                    batch = await self.read(after)
                    catch_up = len(batch) == FEED_READ_COUNT
                else:
                    aio.raise_if_cancelling()  # a cancel redis-py swallowed (shared/aio.py)
                    batch = parse_entries(await sub.next(FEED_IDLE_S))
                fresh = [item for item in batch if item.cursor > after]
                sent = self._checked(after, fresh, keep)
                for item in sent:
                    yield item
                if fresh:
                    after = fresh[-1].cursor
                if sent:
                    beat = time.monotonic()
                if time.monotonic() - beat >= heartbeat_s:
                    beat = time.monotonic()
                    yield FeedItem(kind="heartbeat", cursor=after)

    @staticmethod
    def _checked(after: int, batch: list[FeedItem], keep: FeedFilter | None) -> list[FeedItem]:
        """The items to send for ``batch`` (read after ``after``): a gap item before any
        jump in the cursors (entries the cap trimmed), then the kept events."""
        out: list[FeedItem] = []
        for item in batch:
            if item.cursor > after + 1 and after > 0:
                out.append(
                    FeedItem(
                        kind="gap",
                        cursor=item.cursor - 1,
                        detail=f"entries {after + 1}-{item.cursor - 1} of this spoke's feed "
                        "are no longer kept (feed_maxlen)",
                    )
                )
            after = item.cursor
            if keep is None or keep(item):
                out.append(item)
        return out
