"""Watch pacing: what one watch stream, and one principal's streams, may make a server send.

A WatchAgent call is admitted (and rate-limited) once, then may stream for an hour. Without
a bound per message, a principal with a few streams on chatty agents makes the server sign
and send as fast as the agents print. :func:`paced` puts token buckets between a stream's
source and its sender: every message sent takes a token from the stream's bucket and from its
principal's (shared by all of that principal's streams in this process, :class:`WatchPacing`),
so a stream never sends more than ``burst + rate * seconds`` messages. When more messages
wait than the buckets hold tokens (or a slow receiver lets ``max_held`` pile up), messages
wait in order and are coalesced:

* ``URGENT`` (state changes, so the final one too) is never dropped or merged, and always
  finds a place in the waiting room;
* ``LATEST`` (progress) keeps only the newest one waiting since the last state change;
* ``ORDERED`` (output, dropped-byte counts) keeps its order; the spoke merges a chunk into
  the one waiting before it (``merge``); the hub cannot (the spoke signed each one), so there
  they wait, and when too many wait (``max_held``) the source is not read until some are
  sent, which slows the stream instead of dropping what it carries (and the spoke, whose own
  reader then runs ahead, merges more);
* ``IDLE`` (heartbeats) is sent only when nothing else waits and a token is free; a late
  heartbeat says nothing, so it is dropped.

Under the rate, with a receiver that keeps up, every message goes out as it came. A separate
task reads the source ahead into the waiting room, so a receiver that falls ``max_held``
behind is coalesced too, and a message waiting for a token goes out as soon as one is free,
whether or not the source says anything more. When the source ends, what still waits
goes out at the same pace (at most ``max_held`` and the state changes); a source's error is
raised after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "MAX_HELD",
    "Pacer",
    "PacingConfig",
    "TokenBucket",
    "Treatment",
    "WatchPacing",
    "paced",
]

T = TypeVar("T")

MAX_HELD = 64
"""Messages one stream may hold back before it stops reading its source."""


class Treatment(enum.Enum):
    """How a message is treated while it waits for a token (see the module docstring)."""

    URGENT = "urgent"
    LATEST = "latest"
    ORDERED = "ordered"
    IDLE = "idle"


@dataclass(frozen=True, slots=True)
class PacingConfig:
    """The rates of one server process (its config's ``watch_event_*`` values)."""

    rate: float = 20.0
    """Messages per second one watch stream may carry (sustained)."""
    burst: int = 100
    """Messages one watch stream may carry at once (catching up on stored events)."""
    rate_per_principal: float = 200.0
    """Messages per second all of one principal's watch streams may carry together."""
    burst_per_principal: int = 400
    """Messages all of one principal's watch streams may carry at once."""

    def __post_init__(self) -> None:
        for name in ("rate", "burst", "rate_per_principal", "burst_per_principal"):
            if not getattr(self, name) > 0:
                raise ValueError(f"pacing {name} must be positive")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved."""

    __slots__ = ("_at", "_burst", "_clock", "_rate", "_tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def available(self) -> float:
        """Tokens free now."""
        self._refill()
        return self._tokens

    def delay(self) -> float:
        """Seconds until a token is free (0: one is free now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._rate

    def take(self) -> None:
        """Take a token (callers wait until :meth:`delay` is 0 first)."""
        self._refill()
        self._tokens -= 1


@dataclass(frozen=True, slots=True)
class Pacer:
    """The buckets one stream draws on: its own and its principal's."""

    buckets: tuple[TokenBucket, ...]

    def available(self) -> float:
        """Messages that may go out now."""
        return min(b.available() for b in self.buckets)

    def delay(self) -> float:
        return max(b.delay() for b in self.buckets)

    def take(self) -> None:
        for b in self.buckets:
            b.take()


class WatchPacing:
    """A server's watch pacing: a bucket per principal with open streams, one per stream."""

    def __init__(self, config: PacingConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._principals: dict[str, tuple[TokenBucket, int]] = {}

    @contextlib.contextmanager
    def stream(self, principal: str) -> Iterator[Pacer]:
        """The pacer of one stream of ``principal``, for as long as the stream is open."""
        cfg = self.config
        shared, streams = self._principals.get(principal, (None, 0))
        if shared is None:
            shared = TokenBucket(cfg.rate_per_principal, cfg.burst_per_principal, self._clock)
        self._principals[principal] = (shared, streams + 1)
        try:
            yield Pacer((TokenBucket(cfg.rate, cfg.burst, self._clock), shared))
        finally:
            bucket, left = self._principals[principal]
            if left <= 1:
                del self._principals[principal]  # its debt goes too; streams are capped anyway
            else:
                self._principals[principal] = (bucket, left - 1)

    def principals(self) -> int:
        """How many principals have an open stream (for tests)."""
        return len(self._principals)


class _Room(Generic[T]):
    """What one stream holds back, in order, with each message's treatment."""

    def __init__(self, merge: Callable[[T, T], T | None] | None, max_held: int) -> None:
        self.items: deque[tuple[Treatment, T]] = deque()
        self._merge = merge
        self._max = max_held

    @property
    def full(self) -> bool:
        return len(self.items) >= self._max

    def hold(self, treatment: Treatment, item: T, squeeze: bool) -> bool:
        """Put ``item`` in the room; False when it has no place (an ORDERED message, the room
        full, nothing to merge it with). ``squeeze``: the message could not go out at once
        (more wait than there are tokens, or the room is full), so it is coalesced."""
        items = self.items
        if treatment is Treatment.IDLE:
            if not items:
                items.append((treatment, item))
            return True
        if treatment is Treatment.LATEST and squeeze:
            for i in range(len(items) - 1, -1, -1):
                if items[i][0] is Treatment.URGENT:
                    break
                if items[i][0] is Treatment.LATEST:
                    del items[i]  # superseded by the newer one
                    break
        elif treatment is Treatment.ORDERED:
            if squeeze and items and self._merge is not None and items[-1][0] is treatment:
                merged = self._merge(items[-1][1], item)
                if merged is not None:
                    items[-1] = (treatment, merged)
                    return True
            if self.full:
                return False
        if items and items[-1][0] is Treatment.IDLE:
            items.pop()  # a heartbeat says nothing once something else waits
        items.append((treatment, item))
        return True


async def paced(
    source: AsyncIterator[T],
    pacer: Pacer,
    treat: Callable[[T], Treatment],
    merge: Callable[[T, T], T | None] | None = None,
    max_held: int = MAX_HELD,
) -> AsyncGenerator[T, None]:
    """``source``'s messages at the pacer's rate, coalesced as the module docstring says.

    ``merge(earlier, later)`` returns one message standing for both ORDERED messages, or None
    when they must stay apart. Closing this generator stops reading ``source`` (it is closed
    too, if it is an async generator).
    """
    room: _Room[T] = _Room(merge, max_held)
    changed = asyncio.Event()
    freed = asyncio.Event()
    finished = False
    failure: Exception | None = None

    async def read() -> None:
        nonlocal finished, failure
        try:
            async for item in source:
                treatment = treat(item)
                # Coalesce only what could not go out at once: under the rate, and with a
                # receiver that keeps up, every message is sent as it came.
                while not room.hold(
                    treatment, item, room.full or len(room.items) >= pacer.available()
                ):
                    freed.clear()
                    await freed.wait()
                changed.set()
        except Exception as exc:  # raised to the receiver once what waits is out
            failure = exc
        finally:
            finished = True
            changed.set()

    reader = asyncio.get_running_loop().create_task(read(), name="watch-pacing")
    try:
        while True:
            items = room.items
            if not items:
                if finished:
                    break
                changed.clear()
                await changed.wait()
                continue
            wait = pacer.delay()
            if items[0][0] is Treatment.IDLE and (wait > 0 or len(items) > 1):
                items.popleft()  # a late heartbeat, or one with news behind it, says nothing
                continue
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            _, item = items.popleft()
            freed.set()
            pacer.take()
            yield item
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
    if failure is not None:
        raise failure
