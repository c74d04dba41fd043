"""Watch, queue and dead-letter verbs through the hub, verified end to end."""

from __future__ import annotations

import json

import pytest

from hubspoke import client as hc
from hubspoke.gen.federation.v1 import agent_pb2

from .conftest import Federation, wait_final, wait_state

Agent = agent_pb2.Agent
Kind = agent_pb2.AgentEvent.Kind
pytestmark = pytest.mark.slow


async def test_watch_follows_an_agent_to_its_end(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.6 steps=3")
        events = [e async for e in client.watch(agent.agent_id)]
    states = [e.state.name for e in events if e.kind == Kind.KIND_STATE]
    assert states == ["QUEUED", "STARTING", "RUNNING", "SUCCEEDED"]
    seqs = [e.sequence for e in events if e.kind != Kind.KIND_HEARTBEAT]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert any(e.kind == Kind.KIND_PROGRESS for e in events)
    assert "PROGRESS" in "".join(e.data for e in events if e.kind == Kind.KIND_STDOUT)


async def test_watch_resumes_after_a_sequence_number(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.2 steps=1")
        await wait_final(client, agent.agent_id)
        everything = [e async for e in client.watch(agent.agent_id)]
        cut = everything[2].sequence
        rest = [e async for e in client.watch(agent.agent_id, after=cut)]
    assert [e.sequence for e in rest] == [e.sequence for e in everything if e.sequence > cut]


async def test_watch_sends_heartbeats_while_quiet(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=6 steps=1")
        beats = 0
        async for e in client.watch(agent.agent_id):
            beats += e.kind == Kind.KIND_HEARTBEAT
    assert beats >= 1


async def test_watch_of_unknown_agent_is_not_found(federation: Federation) -> None:
    async with federation.client() as client:
        with pytest.raises(hc.CallError) as err:
            _ = [e async for e in client.watch("nope", spoke="spoke-1")]
    assert err.value.code.name == "NOT_FOUND"


async def test_queue_pause_resume_and_stats(federation: Federation) -> None:
    async with federation.client() as client:
        paused = await client.pause("spoke-1")
        assert paused.paused
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.05")
        stats = await client.queue_stats("spoke-1")
        assert stats.waiting == 1
        assert (await client.get(agent.agent_id)).state == Agent.STATE_QUEUED
        resumed = await client.resume("spoke-1")
        assert not resumed.paused
        assert (await wait_final(client, agent.agent_id)).state == Agent.STATE_SUCCEEDED


async def test_drain_cancels_waiting_agents(federation: Federation) -> None:
    async with federation.client() as client:
        await client.pause("spoke-1")
        ids = [
            (await client.spawn("spoke-1", "synthetic", "duration=0.05")).agent_id for _ in range(3)
        ]
        drained = await client.drain("spoke-1")
        await client.resume("spoke-1")
        assert drained.drained == 3
        for agent_id in ids:
            a = await client.get(agent_id)
            assert a.state == Agent.STATE_KILLED
            assert a.reason == "DRAINED"


async def test_dead_letter_and_replay(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.05 exit=2", max_attempts=2)
        final = await wait_final(client, agent.agent_id)
        assert final.state == Agent.STATE_DEAD_LETTERED
        assert final.reason == "EXIT_NONZERO"
        assert final.attempt == 2
        page = await client.dead_letters("spoke-1")
        assert [a.agent_id for a in page.agents] == [agent.agent_id]
        replayed = await client.replay(agent.agent_id)
        assert replayed.state == Agent.STATE_QUEUED
        again = await wait_final(client, agent.agent_id)
        assert again.state == Agent.STATE_DEAD_LETTERED
        assert again.attempt == 2


async def test_hubctl_watch_queue_and_dlq(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.3 steps=2")
        await wait_state(client, agent.agent_id, Agent.STATE_RUNNING)
    code, out, _ = await federation.hubctl("watch", agent.agent_id, "--json")
    assert code == 0
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert kinds[-1] == "STATE"
    assert json.loads(out.splitlines()[-1])["state"] == "SUCCEEDED"
    code, stats, _ = await federation.hubctl("queue", "stats", "--spoke", "spoke-1", "--json")
    assert code == 0
    assert stats["paused"] is False
    assert "waiting" in stats
    code, dlq, _ = await federation.hubctl("dlq", "list", "--spoke", "spoke-1", "--json")
    assert code == 0
    assert dlq["agents"] == []
    code, _, err = await federation.hubctl("dlq", "replay", agent.agent_id)
    assert code == 1
    assert "AGENT_NOT_RUNNING" in err
