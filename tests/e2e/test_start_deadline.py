"""Start deadline versus signature window (issues 11 and 12), through real hubd and spoked
processes on a real Redis and the real hubctl.

Commands here are signed with a 3 s window, and both daemons allow 1 s of clock skew, so
"minutes later" takes seconds: a paused queue resumed after the window still runs every
spawn (they wait until their start deadline, acceptance + start_within, 24 h by default);
with ``--start-within 2`` they end EXPIRED/NOT_STARTED and never run (each agent would
write a marker file); a captured spawn is refused after its window straight to the spoke,
through the hub and inside a fresh relay signed with the hub's key (the spoke holds the
client's nonce until the start deadline); ``--delay`` beyond 5 minutes is bounded by
``max_delay_s`` and the start deadline, not by the signature; and a relay signed with the
hub's key shows how the spoke judges the hub's acceptance time (late delivery inside the
window is taken, an acceptance too old or after the relay is not).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from hubspoke import commands, envelope, testing
from hubspoke import grpc as sgrpc
from hubspoke.client import Agent, AgentState, Client
from hubspoke.gen.federation.v1 import (
    command_pb2,
    hub_service_pb2,
    hub_service_pb2_grpc,
    spoke_service_pb2,
    spoke_service_pb2_grpc,
)
from hubspoke.spoke.keys import SpokeKeys

WINDOW = dt.timedelta(seconds=3)
"""The signature window of every command signed here."""
SKEW_S = 1.0
"""The clock skew both daemons allow here (30 s by default)."""
SPOKE = "spoke-1"
MAX_RELAY_AGE_S = 60
"""The spoke's max_relay_age_s here (7 days by default)."""
HURRIED = """
[profiles.hurried]
argv = ["sh", "-c", "{task}"]
task_on_stdin = false
unsafe = true
start_within_seconds = 5
"""

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(
        tmp_path / "fed",
        [SPOKE],
        redis_url=redis_url,
        spoke_env={
            "SPOKE_MAX_SKEW_S": str(SKEW_S),
            "SPOKE_SWEEP_INTERVAL_S": "0.5",
            "SPOKE_MAX_RELAY_AGE_S": str(MAX_RELAY_AGE_S),
        },
        spoke_profiles=testing.DEFAULT_PROFILES + HURRIED,
        hub_env={"HUB_MAX_SKEW_S": str(SKEW_S)},
    )
    try:
        await federation.start()
        yield federation
    finally:
        await federation.stop()


def _signed(fed: testing.Federation, body: command_pb2.SpawnAgentBody) -> Any:
    """A spawn for spoke-1 signed by the operator, valid for 3 s only."""
    cmd = commands.build_command(issuer="operator", audience=SPOKE, validity=WINDOW)
    cmd.spawn_agent.CopyFrom(body)
    return commands.sign_command(cmd, fed.operator)


def _touch(marker: Path) -> command_pb2.SpawnAgentBody:
    return command_pb2.SpawnAgentBody(profile="shell", task=f"touch {marker}")


async def _past_window(*envs: command_pb2.SignedEnvelope) -> None:
    """Until every envelope's window, plus the skew, has passed (a few seconds)."""
    last = max(commands.parse_command(e.payload).expire_time.ToDatetime(dt.UTC) for e in envs)
    wait = (last - commands.now()).total_seconds() + SKEW_S + 0.5
    await asyncio.sleep(max(wait, 0))


async def _final(client: Client, agent_id: str, timeout_s: float = 30) -> Agent:
    async with asyncio.timeout(timeout_s):
        while True:
            agent = await client.get(agent_id, SPOKE)
            if agent.final:
                return agent
            await asyncio.sleep(0.1)


async def hubctl(fed: testing.Federation, *argv: str) -> tuple[int, str, str]:
    """hubctl as the operator: exit code, stdout and stderr."""
    run = await fed.hubctl(*argv)
    return run.code, run.stdout, run.stderr


async def test_a_paused_queue_resumed_after_the_window_runs_every_spawn(
    fed: testing.Federation, tmp_path: Path
) -> None:
    """Spawns signed with a 3 s window, through the hub and straight to the spoke, wait in a
    paused queue past their window: on resume every one runs (today's rule ended them
    FAILED/EXPIRED), and each shows its start deadline, acceptance + 24 h."""
    hub = hub_service_pb2_grpc.HubServiceStub(sgrpc.open_channel(fed.hub_address))
    spoke = spoke_service_pb2_grpc.SpokeServiceStub(sgrpc.open_channel(fed.address(SPOKE)))
    markers = [tmp_path / f"ran-{i}" for i in range(6)]
    async with fed.client() as client:
        await client.pause(SPOKE)
        envs = [_signed(fed, _touch(m)) for m in markers]
        for env in envs[:4]:
            await hub.SpawnAgent(hub_service_pb2.HubServiceSpawnAgentRequest(command=env))
        for env in envs[4:]:
            await spoke.SpawnAgent(spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env))
        ids = [commands.parse_command(e.payload).command_id for e in envs]
        before = await client.get(ids[0], SPOKE)
        assert before.state == AgentState.QUEUED
        assert before.start_deadline is not None
        assert before.create_time is not None
        within = before.start_deadline - before.create_time
        assert dt.timedelta(hours=23, minutes=59) < within <= dt.timedelta(hours=24)
        await _past_window(*envs)
        assert not any(m.exists() for m in markers)
        await client.resume(SPOKE)
        ended = [await _final(client, agent_id) for agent_id in ids]
    assert [a.state for a in ended] == [AgentState.SUCCEEDED] * len(ids), [
        (a.state.name, a.reason) for a in ended
    ]
    assert all(m.exists() for m in markers)


async def test_start_within_ends_waiting_agents_expired_and_they_never_run(
    fed: testing.Federation, tmp_path: Path
) -> None:
    """``hubctl spawn --start-within 2`` and ``Client.spawn(start_within_s=2)`` into a paused
    queue: past 2 s each ends EXPIRED (NOT_STARTED) while the queue is still paused (the
    sweeper, every 0.5 s here), and after the queue resumes and runs a later agent, neither
    marker was ever written; hubctl status prints the deadline. A delay that would outlast
    start_within is refused."""
    markers = [tmp_path / "cli-marker", tmp_path / "client-marker"]
    async with fed.client() as client:
        await client.pause(SPOKE)
        code, out, err = await hubctl(
            fed,
            "spawn",
            "--spoke",
            SPOKE,
            "--profile",
            "shell",
            "--start-within",
            "2",
            "--json",
            "--",
            f"touch {markers[0]}",
        )
        assert code == 0, err
        cli_id = json.loads(out)["agent_id"]
        agent = await client.spawn(SPOKE, "shell", f"touch {markers[1]}", start_within_s=2)
        assert agent.start_deadline is not None
        assert agent.create_time is not None
        assert agent.start_deadline - agent.create_time <= dt.timedelta(seconds=2)
        code, out, err = await hubctl(fed, "status", cli_id)
        assert code == 0, err
        assert "start by" in out
        assert agent.start_deadline is not None
        ended = [await _final(client, cli_id), await _final(client, agent.agent_id)]
        assert (await client.queue_stats(SPOKE)).paused
        await client.resume(SPOKE)
        sentinel = await client.spawn(SPOKE, "shell", f"touch {tmp_path / 'sentinel'}")
        assert (await _final(client, sentinel.agent_id)).state == AgentState.SUCCEEDED
        code, _, err = await hubctl(
            fed, "spawn", "--spoke", SPOKE, "--delay", "60", "--start-within", "30", "--", "x"
        )
        assert code != 0
        assert "start_within" in err, err
    assert [(a.state, a.reason) for a in ended] == [(AgentState.EXPIRED, "NOT_STARTED")] * 2
    assert all(a.start_time is None for a in ended)
    assert not any(m.exists() for m in markers)


async def test_a_captured_spawn_is_refused_after_its_window_on_every_path(
    fed: testing.Federation, tmp_path: Path, redis_url: str
) -> None:
    """A spawn accepted through the hub, captured, is sent again after its 3 s window:
    straight to the spoke and through the hub it is refused as expired; wrapped in a fresh
    relay signed with the hub's own key, carrying the hub's acceptance time from inside the
    window, it is refused because the spoke still holds the client's nonce (until the start
    deadline, not until the window ends); and it ran once."""
    hub = hub_service_pb2_grpc.HubServiceStub(sgrpc.open_channel(fed.hub_address))
    spoke = spoke_service_pb2_grpc.SpokeServiceStub(sgrpc.open_channel(fed.address(SPOKE)))
    marker = tmp_path / "once"
    env = _signed(fed, command_pb2.SpawnAgentBody(profile="shell", task=f"echo x >> {marker}"))
    cmd = commands.parse_command(env.payload)
    await hub.SpawnAgent(hub_service_pb2.HubServiceSpawnAgentRequest(command=env))
    keys = SpokeKeys(SPOKE)
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        signed = await r.get(keys.signed(cmd.command_id))  # "<n>:<envelope><relay>" (keys.py)
        length, _, both = signed.partition(b":")
        stored = both[int(length) :]
        nonce_ttl_ms = await r.pttl(keys.nonce("operator", cmd.nonce.hex()))
    finally:
        await r.aclose()
    assert stored
    first = commands.parse_relay(command_pb2.SignedEnvelope.FromString(stored).payload)
    assert first.HasField("accept_time")
    # The client's nonce is held for the start deadline (24 h), not the 3 s window.
    assert nonce_ttl_ms > 23 * 3600 * 1000
    await _past_window(env)

    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await spoke.SpawnAgent(spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env))
    assert direct.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as relayed:
        await hub.SpawnAgent(hub_service_pb2.HubServiceSpawnAgentRequest(command=env))
    assert relayed.value.code() == grpc.StatusCode.UNAUTHENTICATED

    at = commands.now()
    fresh = command_pb2.Relay(
        issuer="hub",
        audience=SPOKE,
        issue_time=commands.to_timestamp(at),
        expire_time=commands.to_timestamp(at + dt.timedelta(minutes=1)),
        nonce=secrets.token_bytes(24),
        command=env,
        accept_time=first.accept_time,
    )
    rewrapped = envelope.sign(
        fresh.SerializeToString(), envelope.PAYLOAD_TYPE_RELAY, fed.key("hub")
    )
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await spoke.SpawnAgent(spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=rewrapped))
    # Not COMMAND_EXPIRED: the acceptance time is inside the window; the claim refuses it.
    assert again.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "replayed" in (again.value.details() or ""), again.value.details()
    async with fed.client() as client:
        agent = await _final(client, cmd.command_id)
    assert agent.state == AgentState.SUCCEEDED
    assert marker.read_text() == "x\n"  # it ran once


async def test_a_delay_beyond_five_minutes_is_accepted_and_keeps_its_deadline(
    fed: testing.Federation,
) -> None:
    """``--delay 600`` is bounded by max_delay_s, not by the 5-minute signature: it is
    stored QUEUED with its start deadline 24 h after acceptance, past its not-before."""
    code, out, err = await hubctl(
        fed, "spawn", "--spoke", SPOKE, "--delay", "600", "--json", "--", "duration=0.1"
    )
    assert code == 0, err
    agent_id = json.loads(out)["agent_id"]
    async with fed.client() as client:
        agent = await client.get(agent_id, SPOKE)
    assert agent.state == AgentState.QUEUED
    assert agent.start_deadline is not None
    assert agent.create_time is not None
    assert agent.start_deadline - agent.create_time > dt.timedelta(hours=23)


def _relay(fed: testing.Federation, env: Any, accepted: dt.datetime) -> Any:
    """A fresh relay of ``env`` to spoke-1, signed with the hub's key, accepted at ``accepted``
    (what the hub's outbox will send when it delivers a spawn late)."""
    at = commands.now()
    relay = command_pb2.Relay(
        issuer="hub",
        audience=SPOKE,
        issue_time=commands.to_timestamp(at),
        expire_time=commands.to_timestamp(at + dt.timedelta(minutes=1)),
        nonce=secrets.token_bytes(24),
        command=env,
        accept_time=commands.to_timestamp(accepted),
    )
    return spoke_service_pb2.SpokeServiceSpawnAgentRequest(
        command=envelope.sign(
            relay.SerializeToString(), envelope.PAYLOAD_TYPE_RELAY, fed.key("hub")
        )
    )


def _signed_at(fed: testing.Federation, at: dt.datetime, body: command_pb2.SpawnAgentBody) -> Any:
    cmd = commands.build_command(issuer="operator", audience=SPOKE, validity=WINDOW, at=at)
    cmd.spawn_agent.CopyFrom(body)
    return commands.sign_command(cmd, fed.operator)


async def test_the_spoke_judges_the_window_at_the_hubs_acceptance_time(
    fed: testing.Federation, tmp_path: Path
) -> None:
    """A spawn accepted by the hub inside its window is taken late (its start deadline
    counts from the acceptance, the profile's start_within_seconds applies); an acceptance
    after the relay was signed, or older than max_relay_age_s, a start_within over the
    spoke's maximum, or a spawn whose start deadline passed before delivery, is refused."""
    spoke = spoke_service_pb2_grpc.SpokeServiceStub(sgrpc.open_channel(fed.address(SPOKE)))
    now = commands.now()

    async def refused(request: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await spoke.SpawnAgent(request)
        return err.value

    # Signed 20 s ago for 3 s, accepted by the hub a second after: delivered now, it runs.
    marker = tmp_path / "late"
    late = _signed_at(fed, now - dt.timedelta(seconds=20), _touch(marker))
    accepted = now - dt.timedelta(seconds=19)
    reply = await spoke.SpawnAgent(_relay(fed, late, accepted))
    assert reply.reply.payload
    late_id = commands.parse_command(late.payload).command_id
    async with fed.client() as client:
        assert (await _final(client, late_id)).state == AgentState.SUCCEEDED
        # The profile's start_within_seconds (5 s), counted from the hub's acceptance.
        hurried = _signed_at(fed, now, command_pb2.SpawnAgentBody(profile="hurried", task="true"))
        await spoke.SpawnAgent(_relay(fed, hurried, now))
        agent = await client.get(commands.parse_command(hurried.payload).command_id, SPOKE)
    assert agent.start_deadline is not None
    assert abs((agent.start_deadline - now).total_seconds() - 5) < 0.01
    assert marker.exists()

    # Accepted after the relay was signed: no hub does that.
    future = _signed_at(fed, now, _touch(tmp_path / "x"))
    err = await refused(_relay(fed, future, commands.now() + dt.timedelta(seconds=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Accepted longer ago than max_relay_age_s, however long the spawn may wait.
    old_at = now - dt.timedelta(seconds=MAX_RELAY_AGE_S + 30)
    old = _signed_at(fed, old_at, _touch(tmp_path / "x"))
    err = await refused(_relay(fed, old, old_at + dt.timedelta(seconds=1)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "max_relay_age_s" in (err.details() or "")
    # A start deadline that passed before delivery.
    body = _touch(tmp_path / "x")
    body.start_within.FromSeconds(5)
    gone = _signed_at(fed, now - dt.timedelta(seconds=20), body)
    err = await refused(_relay(fed, gone, now - dt.timedelta(seconds=19)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Longer than the spoke's max_start_within_s (7 days).
    body = _touch(tmp_path / "x")
    body.start_within.FromSeconds(8 * 86_400)
    err = await refused(
        spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=_signed_at(fed, now, body))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_start_within_s" in (err.details() or "")
    assert not (tmp_path / "x").exists()
