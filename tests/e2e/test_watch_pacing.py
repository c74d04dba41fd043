"""Watch streams are paced per message (docs/security.md §13.5, issue 9).

A real spoked and hubd (processes, each on its own redis-server). The synthetic agent prints
thousands of progress lines a second; a watcher, straight at the spoke and through the hub,
gets every state change the spoke stored, the final one last, in a stream that never carried
more than ``burst + rate * seconds`` messages: far fewer than the lines.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis.asyncio

from hubspoke import commands, testing
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import (
    agent_pb2,
    hub_service_pb2,
    hub_service_pb2_grpc,
    spoke_service_pb2,
    spoke_service_pb2_grpc,
)
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.spoke.model import AgentEvent
from hubspoke.spoke.records import parse_events

pytestmark = pytest.mark.slow

Kind = agent_pb2.AgentEvent.Kind
RATE, BURST = 3, 3
"""The pacing under test (the other side keeps its defaults)."""
LINES = 6000
TASK = f"duration=2 steps={LINES}"  # 3,000 progress lines a second


@dataclass
class Watched:
    events: list[agent_pb2.AgentEvent]
    times: list[float]
    """Seconds from the call to each message."""


async def _watch(
    channel: grpc.aio.Channel, fed: testing.Federation, agent_id: str, *, via_hub: bool
) -> Watched:
    cmd = commands.build_command(issuer="operator", audience="hub" if via_hub else "spoke-1")
    cmd.watch_agent.agent = agent_id
    env = commands.sign_command(cmd, fed.operator)
    if via_hub:
        call = hub_service_pb2_grpc.HubServiceStub(channel).WatchAgent(
            hub_service_pb2.HubServiceWatchAgentRequest(command=env), timeout=90
        )
    else:
        call = spoke_service_pb2_grpc.SpokeServiceStub(channel).WatchAgent(
            spoke_service_pb2.SpokeServiceWatchAgentRequest(command=env), timeout=90
        )
    start = time.monotonic()
    watched = Watched([], [])
    async for response in call:
        watched.events.append(commands.parse_reply(response.reply.payload).agent_event)
        watched.times.append(time.monotonic() - start)
    return watched


async def _stored_states(fed: testing.Federation, agent_id: str) -> list[int]:
    client = redis.asyncio.Redis.from_url(fed.redis_url("spoke-1"))
    try:
        rows = await client.xrange(SpokeKeys("spoke-1").events(agent_id))
        created = await client.hget(SpokeKeys("spoke-1").agent(agent_id), "create_ms")
    finally:
        await client.aclose()
    stored = parse_events(rows)
    if created is not None and (not stored or stored[0].seq == 2):  # event 1 is not stored
        stored.insert(0, AgentEvent(seq=1, kind="state", time_ms=int(created), state="QUEUED"))
    return [agent_pb2.Agent.State.Value(f"STATE_{e.state}") for e in stored if e.kind == "state"]


def _check(watched: Watched, stored_states: list[int]) -> None:
    events = watched.events
    states = [e.state for e in events if e.kind == Kind.KIND_STATE]
    assert states == stored_states  # every state change, in order
    assert events[-1].kind == Kind.KIND_STATE
    assert events[-1].state == agent_pb2.Agent.STATE_SUCCEEDED  # the final one, last
    seqs = [e.sequence for e in events if e.kind != Kind.KIND_HEARTBEAT]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    progress = [e for e in events if e.kind == Kind.KIND_PROGRESS]
    assert progress  # coalesced, not gone
    assert len(events) < LINES / 100
    for count, at in enumerate(watched.times, start=1):
        assert count <= BURST + RATE * at + 1, (count, at, len(events))


async def _spawn(fed: testing.Federation) -> str:
    async with fed.client() as client:
        return (await client.spawn("spoke-1", "synthetic", TASK)).agent_id


async def test_a_watch_straight_at_the_spoke_is_paced(tmp_path: Path) -> None:
    pacing = {"SPOKE_WATCH_EVENT_RATE": str(RATE), "SPOKE_WATCH_EVENT_BURST": str(BURST)}
    fed = testing.Federation(tmp_path, ["spoke-1"], spoke_env=pacing)
    try:
        await fed.start()
        agent_id = await _spawn(fed)
        channel = sgrpc.open_channel(fed.address("spoke-1"))
        try:
            watched = await _watch(channel, fed, agent_id, via_hub=False)
        finally:
            await channel.close(None)
        _check(watched, await _stored_states(fed, agent_id))
        merged = [e for e in watched.events if e.kind == Kind.KIND_STDOUT]
        assert sum(e.data.count("PROGRESS") for e in merged) > len(merged)  # output merged
    finally:
        await fed.stop()


async def test_a_watch_through_the_hub_is_paced(tmp_path: Path) -> None:
    pacing = {"HUB_WATCH_EVENT_RATE": str(RATE), "HUB_WATCH_EVENT_BURST": str(BURST)}
    fed = testing.Federation(tmp_path, ["spoke-1"], hub_env=pacing)
    try:
        await fed.start()
        agent_id = await _spawn(fed)
        channel = sgrpc.open_channel(fed.hub_address)
        try:
            watched = await asyncio.wait_for(_watch(channel, fed, agent_id, via_hub=True), 90)
        finally:
            await channel.close(None)
        _check(watched, await _stored_states(fed, agent_id))
    finally:
        await fed.stop()
