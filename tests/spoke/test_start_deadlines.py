"""The sweeper's start-deadline and approval-window passes read only the agents concerned
(spoke/start_deadlines.py, approvals' held set), not every record: their cost stays flat as
the backlog grows (issue 13, backlog cost). Real Redis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from hubspoke.spoke.backend import now_ms
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.model import AgentState
from hubspoke.spoke.queue import AgentQueue
from hubspoke.spoke.sweeper import Sweeper

from .conftest import SPAWN_REQUEST, command_calls

S = AgentState
BACKLOG = 1500

REQ = SPAWN_REQUEST


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[AgentQueue]:
    queue = AgentQueue(redis_url, "spoke-d")
    await queue.jobs.pause()
    try:
        yield queue
    finally:
        await queue.close()


async def _hmgets(q: AgentQueue) -> int:
    return await command_calls(q.redis, "hmget", "hget")


async def _backlog(q: AgentQueue) -> None:
    """BACKLOG queued agents without a start deadline, written as the create script does."""
    for n in range(BACKLOG):
        await q.create(dataclasses.replace(REQ, agent_id=f"bg-{n}"), 10**6)


async def test_expiry_reads_the_due_agents_not_the_backlog(q: AgentQueue, redis_url: str) -> None:
    await _backlog(q)
    past, future = now_ms() - 1, now_ms() + 3_600_000
    await q.create(dataclasses.replace(REQ, agent_id="late", expire_ms=past), 10**6)
    await q.create(dataclasses.replace(REQ, agent_id="early", expire_ms=future), 10**6)
    started = dataclasses.replace(REQ, agent_id="started", expire_ms=past)
    await q.create(started, 10**6)
    await q.records.transition("started", [S.QUEUED], S.STARTING)
    sweeper = Sweeper(q.records, SpokeConfig(name="spoke-d", redis_url=redis_url))

    before = await _hmgets(q)
    assert await sweeper.expire_unstarted() == 1
    assert await _hmgets(q) - before < 20  # a scan of the index would read 1,500 records
    late = await q.records.get("late")
    assert (late.state, late.reason) == (S.EXPIRED, "NOT_STARTED")
    assert (await q.records.get("early")).state == S.QUEUED
    assert (await q.records.get("started")).state == S.STARTING
    assert await q.redis.zrange(q.keys.start_deadlines, 0, -1) == [b"early"]
    assert await sweeper.expire_unstarted() == 0


async def test_a_replay_and_the_start_up_scan_index_deadlines(
    q: AgentQueue, redis_url: str
) -> None:
    # Stored by a release without the index: spoked's start-up scan adds it.
    await q.create(dataclasses.replace(REQ, agent_id="old", expire_ms=now_ms() - 1), 10**6)
    await q.redis.delete(q.keys.start_deadlines)
    await q.requeue_orphans()
    assert await q.redis.zrange(q.keys.start_deadlines, 0, -1) == [b"old"]
    sweeper = Sweeper(q.records, SpokeConfig(name="spoke-d", redis_url=redis_url))
    assert await sweeper.expire_unstarted() == 1

    await q.create(dataclasses.replace(REQ, agent_id="failed"), 10**6)
    await q.records.transition("failed", [S.QUEUED], S.STARTING)
    await q.records.transition("failed", [S.STARTING], S.FAILED)
    await q.replay("failed", "replay-1", now_ms() - 1)  # its new deadline has passed
    assert await sweeper.expire_unstarted() == 1
    assert (await q.records.get("failed")).state == S.EXPIRED


async def test_a_held_agent_past_its_start_deadline_stays_indexed(
    q: AgentQueue, redis_url: str
) -> None:
    held = dataclasses.replace(
        REQ, agent_id="held", expire_ms=now_ms() - 1, approvals_required=1, approvers=("boss",)
    )
    rec, _ = await q.create(held, 10**6)
    assert rec.state == S.AWAITING_APPROVAL
    sweeper = Sweeper(q.records, SpokeConfig(name="spoke-d", redis_url=redis_url))
    assert await sweeper.expire_unstarted() == 0
    assert await q.redis.zrange(q.keys.start_deadlines, 0, -1) == [b"held"]


async def test_approval_expiry_reads_the_held_agents_not_the_backlog(
    q: AgentQueue, redis_url: str
) -> None:
    await _backlog(q)
    for agent_id, window in (("over", -1), ("open", 3_600_000)):
        held = dataclasses.replace(
            REQ,
            agent_id=agent_id,
            approvals_required=1,
            approvers=("boss",),
            approval_deadline_ms=now_ms() + window,
        )
        await q.create(held, 10**6)
    sweeper = Sweeper(q.records, SpokeConfig(name="spoke-d", redis_url=redis_url))
    before = await _hmgets(q)
    assert await sweeper.expire_approvals() == 1
    assert await _hmgets(q) - before < 20
    over = await q.records.get("over")
    assert (over.state, over.reason) == (S.REJECTED, "APPROVAL_EXPIRED")
    assert (await q.records.get("open")).state == S.AWAITING_APPROVAL
