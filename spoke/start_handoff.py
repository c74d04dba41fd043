"""The just-stored spawn, handed from spoked's spawn handler to its own worker (issue 13,
spawn-to-running): the worker need not read back from Redis the record and signed copies this
process wrote a moment before.

The spawn path ``put``s a record it has just created, with the envelope and relay stored with
it; the worker ``take``s it once, when bullmq hands it that agent's job, and otherwise reads
Redis as before (a miss: another spoked process stored it, the entry expired or was pushed
out, or the job comes back for a later attempt). Nothing is skipped on a hit: the worker still
verifies the handed record against the handed signed copies (spoke/reverify.py) and every
state change is still conditional on the state in Redis (a kill while queued still wins: the
STARTING transition fails). An agent started from a hand-off runs what its client signed,
exactly as one read from Redis.

What the hand-off skips is the read-back that catches an edit of the record in Redis before
it starts (FAILED, TAMPERED): an edit made within ``ttl_ms`` of the store, to a job picked up
that soon, is not run (the signed copy is) but not reported either. A queue paused through
this process keeps nothing (``hold``), so a job that waits there is read from Redis.

Entries live ``ttl_ms`` at most and the map holds ``max_entries`` at most, oldest out first
(spoke config ``start_handoff_ms`` / ``start_handoff_max``), so spawns no worker here takes
(another process's pickup, a full queue) cost nothing lasting.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from .model import AgentRecord, AgentState

DEFAULT_TTL_MS = 2_000
"""How long a handed record waits for its pickup (bullmq takes a due-now job in ms)."""

DEFAULT_MAX_ENTRIES = 1_024
"""The most records waiting for their pickup at once."""


@dataclass(frozen=True, slots=True)
class Handed:
    """A record as just stored, with the signed copies stored beside it."""

    record: AgentRecord
    copies: tuple[bytes, bytes]
    """The client's envelope and the hub's relay (b"" if none), as Records.signed_copies."""
    expires: float
    """time.monotonic() after which it is not handed out."""


class StartHandoff:
    """A small bounded map from agent id to its just-stored record, each taken once."""

    def __init__(
        self, ttl_ms: int = DEFAULT_TTL_MS, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.ttl_s = max(ttl_ms, 0) / 1000
        self.max_entries = max(max_entries, 0)
        self._entries: OrderedDict[str, Handed] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._held = False

    def hold(self) -> None:
        """The queue was paused here: keep nothing until ``release`` (a job that waits is read
        from Redis when it is picked up, so an edit made meanwhile is caught as before)."""
        self._held = True
        self._entries.clear()

    def release(self) -> None:
        self._held = False

    def configure(self, ttl_ms: int, max_entries: int) -> None:
        """Spoke config ``start_handoff_ms`` / ``start_handoff_max`` (0: keep nothing)."""
        self.ttl_s = max(ttl_ms, 0) / 1000
        self.max_entries = max(max_entries, 0)
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, rec: AgentRecord, envelope: bytes, relay: bytes) -> None:
        """Keep ``rec`` (just created, QUEUED, its job added) for this process's worker."""
        if self._held or not self.max_entries or not self.ttl_s:
            return
        if rec.state is not AgentState.QUEUED:
            return
        entries = self._entries
        now = time.monotonic()
        entries.pop(rec.agent_id, None)
        # Oldest first: drop the expired ones, then any beyond the bound.
        while entries and (
            len(entries) >= self.max_entries or next(iter(entries.values())).expires < now
        ):
            entries.popitem(last=False)
        entries[rec.agent_id] = Handed(rec, (envelope, relay), now + self.ttl_s)

    def take(self, agent_id: str) -> Handed | None:
        """The record kept for ``agent_id`` if it has not expired; it is kept no longer."""
        handed = self._entries.pop(agent_id, None)
        if handed is None or handed.expires < time.monotonic():
            self.misses += 1
            return None
        self.hits += 1
        return handed
