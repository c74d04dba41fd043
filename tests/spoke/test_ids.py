"""The id alphabet at the spoke: no command or agent id can name another Redis key.

Before, ``w2:lock`` was a valid id: its job key was the lock key of agent ``w2``'s job, the
spawn answered UNAVAILABLE and left a record that never ran.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis.asyncio

from hubspoke import commands, errors
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2

from .conftest import SPOKE, SpokeClient

BAD_IDS = ("w2:lock", "w2/x", "-w2", ".w2", "w 2", "w2\n", "é", "x" * 129)
BAD_REFS = (
    "w2:lock",
    f"spokes/{SPOKE}/agents/w2:lock",
    f"spokes/{SPOKE}/agents/",
    f"spokes/{SPOKE}/agents/a/b",
    "",
)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def _watch(client: SpokeClient, agent: str) -> None:
    env = client.command("watch_agent", command_pb2.WatchAgentBody(agent=agent))
    stream = client.stub.WatchAgent(
        spoke_service_pb2.SpokeServiceWatchAgentRequest(command=env), timeout=10
    )
    async for _ in stream:
        pass


async def _replay(client: SpokeClient, agent: str) -> None:
    env = client.command("replay_agent", command_pb2.ReplayAgentBody(agent=agent))
    await client.stub.ReplayAgent(
        spoke_service_pb2.SpokeServiceReplayAgentRequest(command=env), timeout=10
    )


def test_the_alphabet() -> None:
    for good in ("w2", "W2.lock_x-1", "0", "a" * 128, str(commands.new_command_id())):
        commands.check_command_id(good)
        commands.check_agent_ref(good)
        commands.check_agent_ref(f"spokes/s/agents/{good}")
    for bad in BAD_IDS:
        with pytest.raises(errors.InvalidCommandError):
            commands.check_command_id(bad)
        with pytest.raises(errors.InvalidCommandError):
            commands.check_agent_ref(bad)


async def test_an_id_with_a_colon_is_refused_by_the_spoke(
    client: SpokeClient, redis_url: str
) -> None:
    first = await client.spawn("duration=0.1", command_id="w2")
    assert first.agent.agent_id == "w2"
    for bad in BAD_IDS:
        err = await _refused(client.spawn("duration=0.1", command_id=bad))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "command_id must be 1-128 characters of A-Z a-z 0-9 . _ -" in (err.details() or "")
    for ref in BAD_REFS:
        for call in (client.get(ref), client.kill(ref), _watch(client, ref), _replay(client, ref)):
            err = await _refused(call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, ref

    done = await client.wait_state("w2", "SUCCEEDED", "FAILED")
    assert done.state == agent_pb2.Agent.STATE_SUCCEEDED
    listed = (await client.list()).agent_page.agents
    assert [a.agent_id for a in listed] == ["w2"]
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert [k async for k in r.scan_iter(match=f"federation:{SPOKE}:agent:w2:*")] == []
        assert await r.exists(f"federation:{SPOKE}:agents:cmd-w2:lock") == 0
    finally:
        await r.aclose()


async def test_a_replay_job_cannot_collide_with_another_agents_job(client: SpokeClient) -> None:
    # Agent "x-r1" ran first: its bullmq job (cmd-x-r1) stays in the completed set. Replay
    # jobs used to be named cmd-{id}-r{n}, so replaying agent "x" enqueued cmd-x-r1 again:
    # bullmq ignored the add (the id exists) and "x" stayed QUEUED for ever.
    await client.spawn("duration=0.1", command_id="x-r1")
    assert (await client.wait_state("x-r1", "SUCCEEDED")).state == agent_pb2.Agent.STATE_SUCCEEDED
    await client.spawn("duration=0.1 fail", command_id="x", max_attempts=1)
    await client.wait_state("x", "FAILED", "DEAD_LETTERED")
    await _replay(client, "x")
    again = await client.wait_state("x", "FAILED", "DEAD_LETTERED")
    assert again.attempt == 1
    assert (await client.get("x-r1")).agent.state == agent_pb2.Agent.STATE_SUCCEEDED
