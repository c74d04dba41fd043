"""SpokeService against a real spoke, real Redis and real agent processes."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from hubspoke import commands
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2

from .conftest import SPOKE, SpokeClient

State = agent_pb2.Agent.State


async def test_spawn_runs_to_success_with_exit_code_and_tail(client: SpokeClient) -> None:
    reply = await client.spawn("duration=0.3 steps=3")
    assert reply.responder == SPOKE
    agent = reply.agent
    assert agent.state == State.STATE_QUEUED
    assert agent.name == f"spokes/{SPOKE}/agents/{agent.agent_id}"
    done = await client.wait_state(agent.agent_id, "SUCCEEDED")
    assert done.exit_code == 0
    assert "PROGRESS" in done.stdout_tail
    assert done.receipt.status == "completed"
    assert done.progress_percent == 100


async def test_failing_agent_is_failed_with_its_exit_code(client: SpokeClient) -> None:
    reply = await client.spawn("duration=0.1 exit=3")
    done = await client.wait_state(reply.agent.agent_id, "FAILED")
    assert done.exit_code == 3
    assert done.reason == "EXIT_NONZERO"


async def test_kill_running_agent_kills_its_process_group(client: SpokeClient) -> None:
    reply = await client.spawn("duration=30 spawn_child")
    running = await client.wait_state(reply.agent.agent_id, "RUNNING")
    pgid = os.getpgid(_pid_of(running))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    killed = (await client.kill(reply.agent.agent_id)).agent
    assert killed.state == State.STATE_KILLED
    assert killed.reason == "KILL_REQUESTED"
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        assert loop.time() - t0 < 2.0, "process group still alive 2 s after kill"
        await asyncio.sleep(0.02)


def _pid_of(agent: agent_pb2.Agent) -> int:
    # The agent's synthetic program prints nothing about its pid; the spoke's record has it.
    # Read it through /proc: the only process whose HUBSPOKE_AGENT_ID is this agent.
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if f"HUBSPOKE_AGENT_ID={agent.agent_id}".encode() in env:
            return int(pid)
    raise AssertionError("agent process not found")


async def test_kill_queued_agent_never_starts(client: SpokeClient) -> None:
    # Occupy every worker slot, then queue one more and kill it while it waits.
    blockers = [await client.spawn("duration=30") for _ in range(4)]
    queued = await client.spawn("duration=0.1")
    killed = (await client.kill(queued.agent.agent_id)).agent
    assert killed.state == State.STATE_KILLED
    for b in blockers:
        await client.kill(b.agent.agent_id)
    await asyncio.sleep(0.5)
    final = (await client.get(queued.agent.agent_id)).agent
    assert final.state == State.STATE_KILLED
    assert final.attempt == 0, "a killed queued agent must never start"


async def test_kill_of_finished_agent_is_failed_precondition(client: SpokeClient) -> None:
    reply = await client.spawn("duration=0.05")
    await client.wait_state(reply.agent.agent_id, "SUCCEEDED")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.kill(reply.agent.agent_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_same_command_id_twice_gives_one_agent(client: SpokeClient, redis_client) -> None:
    first = await client.spawn("duration=0.1", command_id="job-42")
    second = await client.spawn("duration=0.1", command_id="job-42")
    assert first.agent.agent_id == second.agent.agent_id == "job-42"
    listed = (await client.list()).agent_page.agents
    assert [a.agent_id for a in listed] == ["job-42"]


async def test_same_command_id_different_payload_is_already_exists(client: SpokeClient) -> None:
    await client.spawn("duration=0.1", command_id="job-43")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn("duration=0.2", command_id="job-43")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_unknown_agent_is_not_found(client: SpokeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.get("no-such-agent")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_profile_is_invalid_argument(client: SpokeClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn("x", profile="rm-rf")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_relayed_spawn_runs_for_the_original_client(client: SpokeClient) -> None:
    inner = client.command(
        "spawn_agent", command_pb2.SpawnAgentBody(profile="synthetic", task="duration=0.05")
    )
    reply = await client.spawn_env(client.relay(inner))
    assert reply.agent.issuer == "operator"
    assert reply.request_digest == commands.digest(inner.payload)
    await client.wait_state(reply.agent.agent_id, "SUCCEEDED")
