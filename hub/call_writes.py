"""Writes a HubService call leaves to its audit entry's round trip (issue 13).

Every call's audit entry is committed before the answer goes back (hub/audit_service.py).
A write the call itself wants made before it answers, and that may not fail the call (the
agent index after a spawn: hub/store.py), rides along: :func:`defer` hands it to the audit
commit, which sends it in the same pipeline as the entry (hub/audit.py), so it is made
before the answer as before, without a round trip of its own. Outside an audited call
(the audit log is off, or a background task) :func:`defer` declines and the caller writes
as before.

A write whose reply is an error (e.g. NOSCRIPT after Redis lost its scripts), or that could
not ride (the call's entry was not written), is made alone by its ``alone`` callable.

The membership check of a relayed reply rides too (:func:`check_later`): the hub verifies
the spoke's reply against the membership copy it holds (read at admission, hub/prefetch.py),
and the audit script appends the call's entry only if the membership revision is still that
copy's (hub/audit.py); if it moved (a spoke was removed or enrolled meanwhile), nothing is
appended, :class:`MembershipMovedError` is raised, and the call re-reads the membership and
verifies its replies again (:meth:`Collector.recheck`) before it answers, as when the hub
read the revision before verifying.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = [
    "Collector",
    "MembershipMovedError",
    "Write",
    "check_later",
    "collecting",
    "collecting_now",
    "defer",
    "write_alone",
]

log = structlog.get_logger("hubspoke.hub.call_writes")


@dataclass(frozen=True, slots=True)
class Write:
    """One write: ``queue`` adds it to a pipeline (one reply); ``alone`` makes it by itself."""

    queue: Callable[[Any], object]
    alone: Callable[[], Awaitable[None]]


class MembershipMovedError(Exception):
    """The membership revision moved after a reply was verified: verify it again."""


@dataclass(slots=True)
class Collector:
    """The writes one call deferred; closed once the audit entry took them."""

    writes: list[Write] = field(default_factory=list)
    closed: bool = False
    revisions: set[int] = field(default_factory=set)
    """The membership revisions the call's replies were verified against."""
    rechecks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Each re-reads the membership and verifies one reply again (raises if it fails)."""

    @property
    def revision(self) -> int | None:
        """The revision the call's entry must be appended under (None: no condition; -1:
        replies verified against different revisions, which no entry can be)."""
        if not self.revisions:
            return None
        return next(iter(self.revisions)) if len(self.revisions) == 1 else -1

    async def recheck(self) -> None:
        """Verify every deferred reply again with a fresh membership; raise the first
        failure (SpokeReplyError). Each runs once."""
        rechecks, self.rechecks = self.rechecks, []
        self.revisions.clear()
        for check in rechecks:
            await check()

    def take(self) -> tuple[Write, ...]:
        """Close the collector and return its writes (later ones are made alone)."""
        self.closed = True
        taken, self.writes = tuple(self.writes), []
        return taken


_CURRENT: ContextVar[Collector | None] = ContextVar("hubspoke_call_writes", default=None)
_BACKGROUND: set[asyncio.Task[None]] = set()


@contextlib.contextmanager
def collecting() -> Iterator[Collector]:
    """Collect the writes of the call run inside; any not taken at exit are made alone."""
    collector = Collector()
    token = _CURRENT.set(collector)
    try:
        yield collector
    finally:
        _CURRENT.reset(token)
        left = collector.take()
        if left:
            task = asyncio.get_running_loop().create_task(write_alone(left))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)


def defer(write: Write) -> bool:
    """Hand ``write`` to the current call's audit entry; False if there is none (write it)."""
    collector = _CURRENT.get()
    if collector is None or collector.closed:
        return False
    collector.writes.append(write)
    return True


def collecting_now() -> bool:
    """Whether the current call's audit entry can still take writes and checks."""
    collector = _CURRENT.get()
    return collector is not None and not collector.closed


def check_later(revision: int, recheck: Callable[[], Awaitable[None]]) -> bool:
    """Leave the membership check of a reply verified under ``revision`` to the call's audit
    commit; False if the call has none (read the revision now, as before)."""
    collector = _CURRENT.get()
    if collector is None or collector.closed:
        return False
    collector.revisions.add(revision)
    collector.rechecks.append(recheck)
    return True


async def write_alone(writes: tuple[Write, ...]) -> None:
    """Make each write by itself; a failure is logged (these writes never fail a call)."""
    for write in writes:
        try:
            await write.alone()
        except Exception as exc:  # the caller's own write would have been best effort too
            log.warning("deferred_write_failed", problem=str(exc))
