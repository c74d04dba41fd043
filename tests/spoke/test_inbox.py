"""The messages ``hubctl send`` leaves for an agent (spoke/inbox.py), on a real Redis: kept
in order with their signed envelopes, one INPUT event each, bounded, refused in states that
take none, idempotent on the command id; a NEEDS_INPUT agent is resumed once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hubspoke.spoke import inbox
from hubspoke.spoke.backend import AgentMissingError, AgentReusedError
from hubspoke.spoke.model import AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue

S = AgentState


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[AgentQueue]:
    queue = AgentQueue(redis_url, "spoke-i")
    try:
        yield queue
    finally:
        await queue.close()


async def _agent(q: AgentQueue, agent_id: str, *path: tuple[list[S], S, str]) -> None:
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
    for allowed, to, reason in path:
        await q.records.transition(agent_id, allowed, to, reason)


RUN = (([S.QUEUED], S.STARTING, ""), ([S.STARTING], S.RUNNING, ""))
BLOCKED = (*RUN, ([S.RUNNING], S.NEEDS_INPUT, "BLOCKED"))


async def _keep(q: AgentQueue, agent_id: str, cmd: str, text: str, limit: int = 3) -> inbox.Kept:
    return await q.inboxes.keep(
        agent_id,
        command_id=cmd,
        sender="alice",
        text=text,
        envelope=b"signed-" + cmd.encode(),
        relay=b"",
        max_inputs=limit,
    )


async def test_messages_are_kept_in_order_with_their_envelopes_and_events(q: AgentQueue) -> None:
    await _agent(q, "a-1", *RUN)
    first = await _keep(q, "a-1", "c-1", "one")
    second = await _keep(q, "a-1", "c-2", "two")
    assert (first.seq, second.seq, second.state) == (1, 2, S.RUNNING)
    assert [(m.seq, m.sender, m.text) for m in await q.inboxes.messages("a-1")] == [
        (1, "alice", "one"),
        (2, "alice", "two"),
    ]
    assert [m.text for m in await q.inboxes.messages("a-1", after_seq=1)] == ["two"]
    assert await q.inboxes.signed("a-1", 2) == (b"signed-c-2", b"")
    assert (await q.records.get("a-1")).inputs == 2
    events = [e for e in await q.records.events("a-1", 0) if e.kind == "input"]
    assert [(e.data, e.sender, e.input_seq) for e in events] == [
        ("one", "alice", 1),
        ("two", "alice", 2),
    ]


async def test_a_retry_is_answered_and_other_text_under_its_id_refused(q: AgentQueue) -> None:
    await _agent(q, "a-2", *RUN)
    await _keep(q, "a-2", "c-1", "one")
    again = await _keep(q, "a-2", "c-1", "one")
    assert (again.seq, again.again) == (1, True)
    with pytest.raises(AgentReusedError):
        await _keep(q, "a-2", "c-1", "something else")
    assert (await q.records.get("a-2")).inputs == 1


async def test_the_bound_and_the_states_that_take_no_input(q: AgentQueue) -> None:
    await _agent(q, "a-3", *RUN)
    for n in range(3):
        await _keep(q, "a-3", f"c-{n}", "x")
    with pytest.raises(inbox.InboxFullError):
        await _keep(q, "a-3", "c-9", "one too many")
    await _agent(q, "a-4", *RUN, ([S.RUNNING], S.SUCCEEDED, ""))
    with pytest.raises(inbox.NoInputError) as caught:
        await _keep(q, "a-4", "c-1", "late")
    assert caught.value.state == "SUCCEEDED"
    with pytest.raises(AgentMissingError):
        await _keep(q, "nobody", "c-1", "hello?")
    assert await q.inboxes.messages("a-4") == []


async def test_an_answer_resumes_a_needs_input_agent_once(q: AgentQueue) -> None:
    await _agent(q, "a-5", *BLOCKED)
    kept = await _keep(q, "a-5", "c-1", "go on")
    assert kept.state == S.NEEDS_INPUT
    assert await inbox.resume(q.records, q.jobs, "a-5", kept.seq)
    rec = await q.records.get("a-5")
    assert (rec.state, rec.reason, rec.expire_ms) == (S.QUEUED, "INPUT_RECEIVED", 0)
    assert rec.job_id == "input1-a0-a-5"
    assert not await inbox.resume(q.records, q.jobs, "a-5", kept.seq)  # not NEEDS_INPUT now
    assert await q.jobs.exist([rec.job_id]) == [True]  # queued: a worker will take it
