"""A spawn due now is one round trip: our create script and bullmq's own pinned add script in
one EVALSHA (spoke/spawn_lua.py). bullmq-python reads the job as its own, byte for byte the job
``Queue.add`` writes; a refused create writes no job; a delayed spawn still goes through
``Queue.add``. (Node's bullmq reads it too: tests/interop/test_node_bullmq.py.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from hubspoke.spoke import bull_args
from hubspoke.spoke.backend import QueueFullError
from hubspoke.spoke.jobs import PRIORITIZED_KEYS
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.spoke.model import AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue

from .conftest import command_calls

REQ = SpawnRequest(
    agent_id="one-trip-1",
    issuer="operator",
    profile="synthetic",
    task="x",
    priority=7,
    timeout_ms=1000,
    max_attempts=3,
    labels={},
    digest="d",
    expire_ms=0,
    envelope=b"e",
    backoff_ms=250,
)


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[AgentQueue]:
    q = AgentQueue(redis_url, "spoke-1")
    await q.jobs.pause()  # nothing runs: the jobs stay as written
    try:
        yield q
    finally:
        await q.close()


async def _job_hash(r: aioredis.Redis, keys: SpokeKeys, job_id: str) -> dict[bytes, bytes]:
    raw: dict[bytes, bytes] = await r.hgetall(keys.bull(job_id))  # type: ignore[misc]
    return {k: v for k, v in raw.items() if k not in (b"timestamp",)}


async def _evalshas(r: aioredis.Redis) -> int:
    return await command_calls(r, "evalsha")


async def test_the_job_is_bullmqs_own_and_written_in_one_script(queue: AgentQueue) -> None:
    r = queue.redis
    await queue.create(dataclasses.replace(REQ, agent_id="warm-up"), 100)  # loads the script
    before = await _evalshas(r)
    rec, created = await queue.create(REQ, 100)
    assert created
    assert rec.state is AgentState.QUEUED
    assert await _evalshas(r) - before == 1  # the create and the add: one script call

    # The reference: the same agent's job as bullmq-python's Queue.add writes it.
    ours = await _job_hash(r, queue.keys, rec.job_id)
    await queue.jobs.remove(rec.job_id)
    await queue.jobs.enqueue(rec)
    theirs = await _job_hash(r, queue.keys, rec.job_id)
    assert ours == theirs
    assert ours[b"name"] == b"agent"
    assert b"one-trip-1" in ours[b"data"]

    job = await queue.jobs.queue.getJob(rec.job_id)  # bullmq reads it as its own
    assert job.data == {"agent_id": "one-trip-1"}
    assert job.opts["priority"] == 4
    assert job.opts["attempts"] == 64
    assert await queue.jobs.queue.getJobState(rec.job_id) == "prioritized"
    assert (await queue.jobs.stats()).waiting == 2


async def test_a_retried_spawn_adds_no_second_job(queue: AgentQueue) -> None:
    await queue.create(REQ, 100)
    rec, created = await queue.create(REQ, 100)
    assert not created
    assert rec.state is AgentState.QUEUED
    assert (await queue.jobs.stats()).waiting == 1


async def test_a_refused_spawn_writes_no_job(queue: AgentQueue) -> None:
    await queue.create(REQ, 1)
    second = dataclasses.replace(REQ, agent_id="one-trip-2")
    with pytest.raises(QueueFullError):
        await queue.create(second, 1)
    assert await queue.records.get_or_none("one-trip-2") is None
    assert not (await queue.jobs.exist([SpokeKeys.job_id("one-trip-2")]))[0]
    assert (await queue.jobs.stats()).waiting == 1


async def test_a_delayed_spawn_is_a_delayed_job(queue: AgentQueue) -> None:
    rec, _ = await queue.create(dataclasses.replace(REQ, delay_ms=60_000), 100)
    assert await queue.jobs.queue.getJobState(rec.job_id) == "delayed"


async def test_the_add_arguments_are_bullmqs_own_from_a_template(
    queue: AgentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spoke/bull_args.py: per (priority, backoff) a template bullmq's own code made; each
    spawn's arguments are exactly those bullmq's ``Job`` and ``addJobArgs`` give (issue 13)."""
    monkeypatch.setattr("time.time", lambda: 1_764_490_000.123)
    jobs = queue.jobs
    for priority in (1, 5, 10):
        for agent_id in ("a", "4c4a012c-696a-4311-b2f5-98319bd4e191", "é-" + "x" * 80):
            job_id = SpokeKeys.job_id(agent_id)
            made = jobs.add_call(agent_id, priority, 250)
            assert made.args == jobs._bullmq_args(job_id, agent_id, priority, 250)
            assert made.keys == jobs.queue.backend.scripts.getKeys(PRIORITIZED_KEYS)
        assert bull_args.template(
            lambda jid, ts, p=priority: jobs._bullmq_args(jid, jid, p, 250, ts)
        )  # the template path, not the fallback
