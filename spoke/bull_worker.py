"""The spoke's bullmq Worker: bullmq-python's, with its job fetching made to ask Redis once
where it asked up to ``concurrency`` times (issue 13, spawn-to-running).

bullmq's worker loop keeps up to ``concurrency`` fetchers, each running ``getNextJob``. The
Node worker starts each one at once, so the first to find the queue drained sets ``waiting``
(its blocking wait on the queue's marker, BZPOPMIN) before the next is created. The Python
port creates them as tasks, which run only after the loop created all of them: every one of
them saw no wait in progress and ran bullmq's ``moveToActive`` script, for nothing. Measured on
a spoke with concurrency 4 and one agent spawned at a time: 6 ``moveToActive`` calls between
the spawn being stored and its agent being started, 1 of them the pickup; each costs the
loop ~0.15 ms and Redis a Lua call, on that path.

Here a fetcher:

* returns at once when the queue is drained and another fetcher already waits on the marker
  (that one takes the next job the moment it is added, and the loop starts new fetchers then,
  as bullmq's does; no new fetcher is started while one waits, so nothing spins);
* waits while another fetcher's ``moveToActive`` is in flight and then goes on as it would
  have: after a job was found, the fetchers ask one after another (each takes one job while
  there are any), rather than all at once.

Which job is taken, locks, priorities, delays, rate limits and stalled-job checks are
bullmq's own, unchanged: every job still goes through its ``moveToActive``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Worker

__all__ = ["SpokeWorker"]


class SpokeWorker(Worker):  # type: ignore[misc]  # bullmq is untyped
    """bullmq's Worker with one fetch in flight at a time (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._asking: asyncio.Future[None] | None = None
        """Set while a fetcher's non-blocking ``moveToActive`` is in flight."""

    async def getNextJob(self, token: str) -> Any:
        while True:
            if self.closing:
                return None
            if self.drained and self.waiting is not None:
                return None  # another fetcher waits on the marker: it takes the next job
            asking = self._asking
            if asking is None or asking.done():
                break
            await asyncio.wait({asking})  # its answer tells whether there is more to take
        if self.drained:  # this one waits on the marker (bullmq's blocking path)
            return await super().getNextJob(token)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asking = mine
        try:
            return await super().getNextJob(token)
        finally:
            mine.set_result(None)
            if self._asking is mine:
                self._asking = None
