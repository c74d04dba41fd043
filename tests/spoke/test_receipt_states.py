"""The receipt-driven states in the record store, on a real Redis: only the edges of
``model.EDGES`` may be asked for; NEEDS_VERIFICATION is in the verifying set exactly while
the agent is in it; verdicts settle it atomically; the sweeper fails it past its deadline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from hubspoke.spoke.backend import TransitionError, now_ms
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.model import EDGES, FINAL_STATES, AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue
from hubspoke.spoke.records import UnknownItemError
from hubspoke.spoke.sweeper import Sweeper

S = AgentState


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[AgentQueue]:
    queue = AgentQueue(redis_url, "spoke-r")
    try:
        yield queue
    finally:
        await queue.close()


async def _running(q: AgentQueue, agent_id: str) -> None:
    req = SpawnRequest(
        agent_id=agent_id,
        issuer="operator",
        profile="synthetic",
        task="x",
        priority=5,
        timeout_ms=1000,
        max_attempts=1,
        labels={},
        digest="d",
        expire_ms=0,
        envelope=b"e",
    )
    await q.create(req, 100)
    await q.records.transition(agent_id, [S.QUEUED], S.STARTING)
    await q.records.transition(agent_id, [S.STARTING], S.RUNNING)


async def _verifying(q: AgentQueue, agent_id: str, deadline_ms: int, *names: str) -> None:
    await _running(q, agent_id)
    fields = {"verify_deadline_ms": deadline_ms, "pending": json.dumps(names), "verdicts": "{}"}
    await q.records.transition(
        agent_id, [S.RUNNING], S.NEEDS_VERIFICATION, "VERIFICATION_PENDING", fields
    )


def test_the_edge_table() -> None:
    assert set(EDGES) == set(S)
    assert not any(EDGES[to] & FINAL_STATES for to in EDGES if to != S.QUEUED)  # only replay
    assert EDGES[S.NEEDS_INPUT] == {S.RUNNING}
    assert EDGES[S.NEEDS_VERIFICATION] == {S.RUNNING}
    assert {to for to in EDGES if S.NEEDS_VERIFICATION in EDGES[to]} == {
        S.SUCCEEDED,
        S.FAILED,
        S.KILLED,
    }
    # A kill ends it; a message (hubctl send) queues its next attempt (spoke/inbox.py).
    assert {to for to in EDGES if S.NEEDS_INPUT in EDGES[to]} == {S.KILLED, S.QUEUED}


async def test_an_edge_outside_the_table_is_refused(q: AgentQueue) -> None:
    await _running(q, "e-1")
    for allowed_from, to in (
        ([S.QUEUED], S.NEEDS_INPUT),
        ([S.NEEDS_INPUT], S.SUCCEEDED),
        ([S.NEEDS_INPUT], S.RUNNING),
        ([S.SUCCEEDED], S.NEEDS_VERIFICATION),
    ):
        with pytest.raises(ValueError, match="no edge"):
            await q.records.transition("e-1", allowed_from, to)
    assert (await q.records.get("e-1")).state == S.RUNNING


async def test_verdicts_settle_a_verifying_agent(q: AgentQueue) -> None:
    await _verifying(q, "v-1", now_ms() + 60_000, "a", "b")
    verifying = q.keys.verifying
    assert await q.redis.zscore(verifying, "v-1") is not None
    with pytest.raises(UnknownItemError, match="c"):
        await q.records.settle("v-1", {"a": "passed", "c": "passed"}, "op")
    assert (await q.records.get("v-1")).verdicts == {}  # nothing of a refused call is kept
    assert await q.records.settle("v-1", {"a": "passed"}, "op") == ("waiting", "")
    rec = await q.records.get("v-1")
    assert (rec.state, rec.verdicts, rec.verified_by) == (
        S.NEEDS_VERIFICATION,
        {"a": "passed"},
        {"a": "op"},
    )
    assert await q.records.settle("v-1", {"b": "passed"}, "op2") == ("SUCCEEDED", "")
    rec = await q.records.get("v-1")
    assert rec.state == S.SUCCEEDED
    assert rec.end_ms is not None
    assert rec.verified_by == {"a": "op", "b": "op2"}
    assert await q.redis.zscore(verifying, "v-1") is None
    with pytest.raises(TransitionError):
        await q.records.settle("v-1", {"b": "passed"}, "op")

    await _verifying(q, "v-2", now_ms() + 60_000, "a", "b")
    assert await q.records.settle("v-2", {"a": "failed"}, "op") == (
        "FAILED",
        "VERIFICATION_FAILED",
    )


async def test_the_sweeper_fails_what_is_past_its_window_and_only_that(
    q: AgentQueue, redis_url: str
) -> None:
    await _verifying(q, "late", now_ms() - 1, "a")
    await _verifying(q, "early", now_ms() + 60_000, "a")
    await _verifying(q, "killed", now_ms() - 1, "a")
    await q.kills.request("killed", "kill-1")
    sweeper = Sweeper(q.records, SpokeConfig(name="spoke-r", redis_url=redis_url))
    assert await sweeper.expire_verifications() == 1
    late = await q.records.get("late")
    assert (late.state, late.reason) == (S.FAILED, "VERIFICATION_TIMEOUT")
    assert (await q.records.get("early")).state == S.NEEDS_VERIFICATION
    killed = await q.records.get("killed")
    assert (killed.state, killed.reason) == (S.KILLED, "KILL_REQUESTED")
    assert await q.redis.zrange(q.keys.verifying, 0, -1) == [b"early"]
    assert await sweeper.expire_verifications() == 0
