"""The sweeper forgets finished agents once their retention has passed, fails agents whose
verification window has closed, and ends queued agents past their start deadline EXPIRED
(NOT_STARTED) even while no worker takes them (a paused queue); a worker that takes one
later skips it, and one that takes it first ends it the same way (spoke/worker.py).

It runs in every spoked process: the retention sweep every ``sweep_interval_s``, the
verification check every ``VERIFY_CHECK_S``. Both are idempotent, so several processes on
one Redis do no harm. An agent's command id stays known (and a reused id with another
payload stays refused) until its record is swept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from hubspoke.aio import raise_if_cancelling

from . import approvals, start_deadlines
from .backend import AgentMissingError, QueueError, TransitionError, now_ms
from .config import SpokeConfig
from .model import NOT_STARTED, AgentState
from .records import Records

log = structlog.get_logger("hubspoke.spoke.sweeper")

VERIFY_CHECK_S = 1.0
"""How often NEEDS_VERIFICATION agents past their deadline are looked for."""

VERIFICATION_TIMEOUT = "VERIFICATION_TIMEOUT"


class Sweeper:
    def __init__(self, records: Records, config: SpokeConfig) -> None:
        self.records = records
        self.config = config
        self.swept = 0
        self.timed_out = 0
        self.expired = 0

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

    async def expire_unstarted(self) -> int:
        """QUEUED agents past their start deadline → EXPIRED (NOT_STARTED), every
        ``sweep_interval_s``: only the due part of the deadline index (spoke/start_deadlines.py,
        two round trips per 500 due agents), never the whole backlog. Agents that started,
        ended or are gone leave the index; a held one (not queued yet) stays in it."""
        now = now_ms()
        redis, keys = self.records.redis, self.records.keys
        expired = offset = 0
        while rows := await start_deadlines.due(redis, keys, now, offset):
            done: list[str] = []
            for agent_id, state in rows:
                if state == AgentState.QUEUED.value.encode():
                    with contextlib.suppress(TransitionError, AgentMissingError):  # a worker won
                        await self.records.transition(
                            agent_id, [AgentState.QUEUED], AgentState.EXPIRED, NOT_STARTED
                        )
                        expired += 1
                if state not in start_deadlines.NOT_YET_QUEUED:
                    done.append(agent_id)
            await start_deadlines.forget(redis, keys, done)
            offset += len(rows) - len(done)  # the held ones stay ahead of the next batch
        if expired:
            self.expired += expired
            log.info("start_deadline_passed", agents=expired)
        return expired

    async def expire_verifications(self) -> int:
        """NEEDS_VERIFICATION agents past their deadline → FAILED (VERIFICATION_TIMEOUT)."""
        failed = 0
        for agent_id in await self.records.overdue_verifications(now_ms()):
            try:
                await self.records.transition(
                    agent_id,
                    [AgentState.NEEDS_VERIFICATION],
                    AgentState.FAILED,
                    VERIFICATION_TIMEOUT,
                )
                failed += 1
            except (TransitionError, AgentMissingError):
                # Settled, killed or swept meanwhile: the set keeps no such member.
                await self.records.forget_verifying(agent_id)
        if failed:
            self.timed_out += failed
            log.info("verification_timed_out", agents=failed)
        return failed

    async def expire_approvals(self) -> int:
        """AWAITING_APPROVAL agents past their approval window → REJECTED (APPROVAL_EXPIRED)."""
        expired = await approvals.expire_overdue(self.records)
        if expired:
            log.info("approval_expired", agents=expired)
        return expired

    async def run(self) -> None:
        next_sweep = 0.0
        while True:
            with contextlib.suppress(QueueError):
                await self.expire_verifications()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.config.sweep_interval_s
                try:
                    await self.expire_unstarted()
                    await self.expire_approvals()
                    await self.sweep_once()
                except QueueError as exc:
                    log.warning("sweep_failed", error=str(exc))
            raise_if_cancelling()
            await asyncio.sleep(min(VERIFY_CHECK_S, self.config.sweep_interval_s))
