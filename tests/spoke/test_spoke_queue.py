"""The spoke's queue in depth: priorities, retries, dead letters, limits, timeouts, expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from hubspoke import commands
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.spoke.app import SpokeApp

from .conftest import SpokeClient

State = agent_pb2.Agent.State
Start = Callable[..., Awaitable[tuple[SpokeApp, SpokeClient]]]
SOLO = {"argv": ["python3", "-m", "hubspoke.spoke.synthetic"], "max_concurrency": 1}


def _ms(ts: Any) -> int:
    return int(ts.ToMilliseconds())


async def _queue_rpc(client: SpokeClient, rpc: str, body: str) -> command_pb2.Reply:
    env = client.command(body, getattr(command_pb2, _body_type(body))())
    req = getattr(spoke_service_pb2, f"SpokeService{rpc}Request")(command=env)
    resp = await getattr(client.stub, rpc)(req, timeout=10)
    return commands.parse_reply(resp.reply.payload)


def _body_type(body: str) -> str:
    return "".join(p.capitalize() for p in body.split("_")) + "Body"


async def test_priority_10_runs_before_5_before_1(start_spoke: Start) -> None:
    _, client = await start_spoke(concurrency=1)
    await _queue_rpc(client, "PauseQueue", "pause_queue")
    low = await client.spawn("duration=0.05", priority=1)
    mid = await client.spawn("duration=0.05", priority=5)
    high = await client.spawn("duration=0.05", priority=10)
    await _queue_rpc(client, "ResumeQueue", "resume_queue")
    done = [await client.wait_state(a.agent.agent_id, "SUCCEEDED") for a in (low, mid, high)]
    starts = {a.agent_id: _ms(a.start_time) for a in done}
    order = sorted(starts, key=starts.__getitem__)
    assert order == [high.agent.agent_id, mid.agent.agent_id, low.agent.agent_id]


async def test_failed_attempts_retry_with_backoff_then_dead_letter(start_spoke: Start) -> None:
    _, client = await start_spoke(retry_backoff_ms=300)
    reply = await client.spawn("duration=0.01 exit=4", max_attempts=3)
    final = await client.wait_state(reply.agent.agent_id, "DEAD_LETTERED", within=20)
    assert final.attempt == 3
    assert final.exit_code == 4
    assert final.reason == "EXIT_NONZERO"
    events = await _state_events(client, reply.agent.agent_id)
    retrying = [e for e in events if e.state == State.STATE_RETRYING]
    starting = [e for e in events if e.state == State.STATE_STARTING]
    assert len(retrying) == 2
    assert len(starting) == 3
    # Backoff with jitter: attempt n waits between half and all of 300 ms * 2^(n-1).
    gaps = [
        _ms(s.event_time) - _ms(r.event_time) for r, s in zip(retrying, starting[1:], strict=True)
    ]
    assert 150 - 50 <= gaps[0] <= 300 + 1000
    assert 300 - 50 <= gaps[1] <= 600 + 1000


async def _state_events(client: SpokeClient, agent_id: str) -> list[agent_pb2.AgentEvent]:
    env = client.command("watch_agent", command_pb2.WatchAgentBody(agent=agent_id))
    call = client.stub.WatchAgent(
        spoke_service_pb2.SpokeServiceWatchAgentRequest(command=env), timeout=30
    )
    out = []
    async for resp in call:
        ev = commands.parse_reply(resp.reply.payload).agent_event
        if ev.kind == agent_pb2.AgentEvent.Kind.KIND_STATE:
            out.append(ev)
    return out


async def test_single_attempt_failure_is_failed_and_replayable(client: SpokeClient) -> None:
    reply = await client.spawn("duration=0.01 exit=1")
    await client.wait_state(reply.agent.agent_id, "FAILED")
    page = (await _queue_rpc(client, "ListDeadLetters", "list_dead_letters")).agent_page
    assert [a.agent_id for a in page.agents] == [reply.agent.agent_id]


async def test_timeout_kills_the_group_and_is_timed_out(client: SpokeClient) -> None:
    reply = await client.spawn("duration=30 spawn_child", timeout=duration_pb2.Duration(seconds=1))
    t0 = time.monotonic()
    final = await client.wait_state(reply.agent.agent_id, "TIMED_OUT", within=10)
    assert final.reason == "TIMEOUT"
    assert time.monotonic() - t0 < 1 + 2 + 2  # timeout + kill grace + slack
    assert not _agent_processes(reply.agent.agent_id)


def _agent_processes(agent_id: str) -> list[int]:
    """Live (non-zombie) processes whose environment names this agent."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"HUBSPOKE_AGENT_ID={agent_id}".encode() in env and state != "Z":
            found.append(int(pid))
    return found


async def test_start_deadline_not_signature_decides_whether_a_queued_agent_starts(
    start_spoke: Start,
) -> None:
    """Issue 11 replaced the rule this test pinned (a queued agent expired with its
    command's signature, FAILED/EXPIRED): a spawn signed for 1 s still starts after its
    window, and one whose start_within (1 s) has passed ends EXPIRED/NOT_STARTED unstarted."""
    _, client = await start_spoke()
    await _queue_rpc(client, "PauseQueue", "pause_queue")
    ids = []
    for within in (0, 1):
        cmd = commands.build_command(
            issuer="operator", audience="spoke-1", validity=dt.timedelta(seconds=1)
        )
        body = command_pb2.SpawnAgentBody(profile="synthetic", task="duration=0")
        if within:
            body.start_within.FromSeconds(within)
        cmd.spawn_agent.CopyFrom(body)
        reply = await client.spawn_env(commands.sign_command(cmd, client.peers.operator))
        ids.append(reply.agent.agent_id)
    await asyncio.sleep(1.5)
    await _queue_rpc(client, "ResumeQueue", "resume_queue")
    assert (await client.wait_state(ids[0], "SUCCEEDED")).attempt == 1
    final = await client.wait_state(ids[1], "EXPIRED")
    assert final.reason == "NOT_STARTED"
    assert final.attempt == 0


async def test_delay_holds_an_agent_back(client: SpokeClient) -> None:
    reply = await client.spawn("duration=0.01", delay=duration_pb2.Duration(seconds=1))
    await asyncio.sleep(0.5)
    assert (await client.get(reply.agent.agent_id)).agent.state == State.STATE_QUEUED
    done = await client.wait_state(reply.agent.agent_id, "SUCCEEDED")
    assert _ms(done.start_time) - _ms(done.create_time) >= 950


async def test_queue_depth_cap_is_resource_exhausted(start_spoke: Start) -> None:
    _, client = await start_spoke(max_queue_depth=2)
    await _queue_rpc(client, "PauseQueue", "pause_queue")
    await client.spawn("duration=0")
    await client.spawn("duration=0")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn("duration=0")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_profile_concurrency_limit_queues_not_refuses(start_spoke: Start) -> None:
    _app, client = await start_spoke(
        concurrency=3,
        profiles={"synthetic": {}, "solo": SOLO},
    )
    ids = [(await client.spawn("duration=0.4", profile="solo")).agent.agent_id for _ in range(3)]
    peak = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [(await client.get(i)).agent.state for i in ids]
        peak = max(peak, sum(s in (State.STATE_STARTING, State.STATE_RUNNING) for s in states))
        if all(s == State.STATE_SUCCEEDED for s in states):
            break
        await asyncio.sleep(0.05)
    finals = [(await client.get(i)).agent.state for i in ids]
    assert finals == [State.STATE_SUCCEEDED] * 3
    assert peak == 1


async def test_flooding_agent_keeps_bounded_tail_and_spoke_responsive(
    start_spoke: Start,
) -> None:
    _, client = await start_spoke(output_tail_bytes=4096, lock_duration_ms=2000)
    reply = await client.spawn("duration=3 output=30000000")
    slowest = 0.0
    while True:
        t0 = time.monotonic()
        agent = (await client.get(reply.agent.agent_id)).agent
        slowest = max(slowest, time.monotonic() - t0)
        if agent.state in (State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_RETRYING):
            break
        await asyncio.sleep(0.1)
    assert agent.state == State.STATE_SUCCEEDED
    assert agent.attempt == 1  # never falsely stalled and re-run, though lock is 2 s
    assert len(agent.stdout_tail.encode()) <= 4096
    assert slowest < 1.0


async def test_kill_of_agent_ignoring_sigterm(start_spoke: Start) -> None:
    _, client = await start_spoke()
    reply = await client.spawn("duration=60 ignore_term")
    await client.wait_state(reply.agent.agent_id, "RUNNING")
    await asyncio.sleep(0.3)  # let it install its handler
    t0 = time.monotonic()
    killed = (await client.kill(reply.agent.agent_id)).agent
    assert killed.state == State.STATE_KILLED
    assert killed.exit_code == -9
    assert time.monotonic() - t0 < 2.0 + 1.5  # synthetic's grace is 2 s
    assert not _agent_processes(reply.agent.agent_id)


async def test_command_id_stays_known_after_the_agent_finished(client: SpokeClient) -> None:
    first = await client.spawn("duration=0.01", command_id="keep-1")
    await client.wait_state("keep-1", "SUCCEEDED")
    again = await client.spawn("duration=0.01", command_id="keep-1")
    assert again.agent.state == State.STATE_SUCCEEDED
    assert again.agent.attempt == first.agent.attempt + 1 == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn("duration=0.02", command_id="keep-1")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_sweeper_forgets_finished_agents_after_retention(start_spoke: Start) -> None:
    _, client = await start_spoke(retention_s=1.0, sweep_interval_s=0.3)
    reply = await client.spawn("duration=0.01")
    await client.wait_state(reply.agent.agent_id, "SUCCEEDED")
    running = await client.spawn("duration=30")
    await client.wait_state(running.agent.agent_id, "RUNNING")
    await asyncio.sleep(2.5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.get(reply.agent.agent_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await client.get(running.agent.agent_id)).agent.state == State.STATE_RUNNING
    await client.kill(running.agent.agent_id)


async def test_a_different_delay_is_a_different_spawn(client: SpokeClient) -> None:
    await client.spawn("duration=0", command_id="d-1", delay=duration_pb2.Duration(seconds=5))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn("duration=0", command_id="d-1", delay=duration_pb2.Duration(seconds=6))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_spoked_with_a_taken_port_fails_in_one_line(peers, redis_url, tmp_path) -> None:
    import socket
    import subprocess
    import sys

    from .conftest import spoke_mapping
    from .test_recovery import write_spoke_toml

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = spoke_mapping(peers, redis_url, listen=f"127.0.0.1:{port}")
        path = write_spoke_toml(tmp_path / "s.toml", raw)
        done = subprocess.run(
            [sys.executable, "-m", "hubspoke.spoke", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("Error: could not bind")
    assert "Traceback" not in done.stderr


async def test_replay_is_idempotent_on_its_command_id(client: SpokeClient) -> None:
    reply = await client.spawn("duration=0.01 exit=1")
    agent_id = reply.agent.agent_id
    await client.wait_state(agent_id, "FAILED")
    body = command_pb2.ReplayAgentBody(agent=agent_id)

    async def replay(command_id: str) -> agent_pb2.Agent:
        env = client.command("replay_agent", body, command_id=command_id)
        resp = await client.stub.ReplayAgent(
            spoke_service_pb2.SpokeServiceReplayAgentRequest(command=env), timeout=10
        )
        return commands.parse_reply(resp.reply.payload).agent

    first = await replay("replay-1")
    assert first.state == State.STATE_QUEUED
    await client.wait_state(agent_id, "FAILED")
    again = await replay("replay-1")  # a retry of the same replay: its agent, no new run
    assert again.state == State.STATE_FAILED
    third = await replay("replay-2")  # a new replay runs it again
    assert third.state == State.STATE_QUEUED
    await client.wait_state(agent_id, "FAILED")


async def test_a_superseded_attempt_cannot_overwrite_its_successor(redis_url: str) -> None:
    """A worker paused past its lease (SIGSTOP) wakes up after another took the agent over:
    its late transitions are refused, so it cannot clobber the newer attempt."""
    from hubspoke.spoke.backend import TransitionError
    from hubspoke.spoke.model import AgentState, SpawnRequest
    from hubspoke.spoke.queue import AgentQueue

    q = AgentQueue(redis_url, "spoke-1")
    try:
        req = SpawnRequest(
            agent_id="paused-1",
            issuer="operator",
            profile="synthetic",
            task="x",
            priority=5,
            timeout_ms=1000,
            max_attempts=3,
            labels={},
            digest="d",
            expire_ms=0,
            envelope=b"e",
        )
        await q.create(req, 100)
        await q.records.transition(
            "paused-1",
            [AgentState.QUEUED],
            AgentState.STARTING,
            fields={"worker": "A", "attempt": 1},
        )
        await q.records.transition(
            "paused-1", [AgentState.STARTING], AgentState.RUNNING, owner=("A", 1)
        )
        # B recovers it (guarded by A's ownership) and starts attempt 2.
        await q.records.transition(
            "paused-1", [AgentState.RUNNING], AgentState.RETRYING, "LOST", owner=("A", 1)
        )
        await q.records.transition(
            "paused-1",
            [AgentState.RETRYING],
            AgentState.STARTING,
            fields={"worker": "B", "attempt": 2},
        )
        await q.records.transition(
            "paused-1", [AgentState.STARTING], AgentState.RUNNING, owner=("B", 2)
        )
        # A wakes up and reports its (killed) attempt 1 as failed: refused.
        with pytest.raises(TransitionError, match="superseded"):
            await q.records.transition(
                "paused-1",
                [AgentState.RUNNING],
                AgentState.RETRYING,
                "EXIT_NONZERO",
                owner=("A", 1),
            )
        await q.records.transition(
            "paused-1", [AgentState.RUNNING], AgentState.SUCCEEDED, owner=("B", 2)
        )
        assert (await q.records.get("paused-1")).state is AgentState.SUCCEEDED
    finally:
        await q.close()
