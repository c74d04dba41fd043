"""Writing the agent index after a call (hub/store.py keeps it): best effort, and in an
audited call, in the call's audit commit (hub/call_writes.py) rather than a round trip of
its own.

The index only speeds up routing: a Redis hiccup here must not fail a spawn the spoke
already accepted (a later lookup falls back to asking every spoke).
"""

from __future__ import annotations

import structlog

from hubspoke import errors

from . import call_writes
from .store import HubStore

__all__ = ["IndexWriter"]

log = structlog.get_logger("hubspoke.hub.service")


class IndexWriter:
    """Records which spoke holds an agent, for ``ttl_s``."""

    def __init__(self, store: HubStore, ttl_s: float, audited: bool) -> None:
        """``audited``: the audit log is on, so a call's index write may ride on its entry."""
        self._store = store
        self._ttl_s = ttl_s
        self._audited = audited

    async def remember(self, agent_id: str, spoke: str) -> None:
        """Index ``agent_id`` on ``spoke``: with the call's audit entry if it has one (the
        write is made by the time the call answers), else now."""
        if self._audited and call_writes.defer(self._deferred(agent_id, spoke)):
            return
        await self._write(agent_id, spoke)

    def _deferred(self, agent_id: str, spoke: str) -> call_writes.Write:
        return call_writes.Write(
            lambda pipe: self._store.queue_remember(pipe, agent_id, spoke, self._ttl_s),
            lambda: self._write(agent_id, spoke),
        )

    async def _write(self, agent_id: str, spoke: str) -> None:
        try:
            await self._store.remember_agent(agent_id, spoke, self._ttl_s)
        except errors.BackendUnavailableError:
            log.warning("agent_index_write_failed", agent=agent_id, spoke=spoke)
