"""The sweeper forgets finished agents once their retention has passed.

It runs in every spoked process every ``sweep_interval_s``; sweeping is idempotent, so
several processes on one Redis do no harm. An agent's command id stays known (and a
reused id with another payload stays refused) until its record is swept.
"""

from __future__ import annotations

import asyncio

import structlog

from hubspoke.aio import raise_if_cancelling

from .backend import QueueError
from .config import SpokeConfig
from .records import Records

log = structlog.get_logger("hubspoke.spoke.sweeper")


class Sweeper:
    def __init__(self, records: Records, config: SpokeConfig) -> None:
        self.records = records
        self.config = config
        self.swept = 0

    async def sweep_once(self) -> int:
        total = 0
        while True:
            n = await self.records.sweep(int(self.config.retention_s * 1000))
            total += n
            if n == 0:
                break
        self.swept += total
        if total:
            log.info("sweep", swept=total)
        return total

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except QueueError as exc:
                log.warning("sweep_failed", error=str(exc))
            raise_if_cancelling()
            await asyncio.sleep(self.config.sweep_interval_s)
