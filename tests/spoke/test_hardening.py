"""Spoke hardening (issue 9): per-principal quotas, a bounded start delay, list pages bounded
by bytes, and re-verification of the stored signed spawn before every start.

Every test runs real spoked processes on a real redis-server; agents are real processes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from hubspoke import commands, keys, policy
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.grpc import status as sgrpc
from hubspoke.spoke.keys import SpokeKeys

from . import test_recovery
from .conftest import SPOKE, Peers, SpokeClient, write_trust

spokeds = test_recovery.spokeds
"""The fixture of real spoked processes (each test's own, stopped at teardown)."""

State = agent_pb2.Agent.State
OTHER = "other"
DAY = 86_400


@pytest.fixture
def other(peers: Peers) -> keys.SigningKey:
    """A second client the policy lets do everything the operator may (scope: own)."""
    key = keys.generate(OTHER)
    keys.write_keypair(key, peers.key_dir)
    write_trust(
        peers.trust_file,
        [(peers.hub, "hub"), (peers.spoke, "spoke"), (peers.operator, "client"), (key, "client")],
    )
    rule = policy.ALLOW_OPERATOR_EVERYTHING.split("[[rule]]", 1)[1]
    rule = rule.replace('"operator-all"', '"other-all"').replace('["operator"]', f'["{OTHER}"]')
    rule = rule.replace('scope = "any"', 'scope = "own"')
    (peers.trust_file.parent / "policy.toml").write_text(
        policy.ALLOW_OPERATOR_EVERYTHING + "\n[[rule]]" + rule
    )
    return key


async def _call(client: SpokeClient, rpc: str, body: str, msg: Any, **kw: Any) -> Any:
    request = getattr(spoke_service_pb2, f"SpokeService{rpc}Request")
    resp = await getattr(client.stub, rpc)(
        request(command=client.command(body, msg, **kw)), timeout=20
    )
    return commands.parse_reply(resp.reply.payload)


async def _pause(client: SpokeClient) -> None:
    await _call(client, "PauseQueue", "pause_queue", command_pb2.PauseQueueBody())


async def _resume(client: SpokeClient) -> None:
    await _call(client, "ResumeQueue", "resume_queue", command_pb2.ResumeQueueBody())


async def _spawn_as(
    client: SpokeClient, key: keys.SigningKey, task: str = "duration=0", **body: Any
) -> command_pb2.Reply:
    msg = command_pb2.SpawnAgentBody(profile=body.pop("profile", "synthetic"), task=task, **body)
    return await client.spawn_env(client.command("spawn_agent", msg, key=key))


async def _refused(call: Any) -> sgrpc.CallFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return sgrpc.from_rpc_error(info.value)


def _later(seconds: int) -> Any:
    from google.protobuf import duration_pb2

    return duration_pb2.Duration(seconds=seconds)


# --- quotas ------------------------------------------------------------------------------


async def test_one_principal_fills_its_quota_and_another_can_still_spawn(
    spokeds: Any, other: keys.SigningKey, redis_url: str
) -> None:
    """Far-delayed spawns from one client stop at its quota (RESOURCE_EXHAUSTED,
    QUOTA_EXCEEDED, nothing stored), well below the queue's depth cap: the other client still
    spawns. Every way out of the waiting states gives the quota back (kill, drain, a start)."""
    _, client = await spokeds(
        max_queued_per_principal=5, max_queue_depth=50, rate_burst=1000, max_delay_s=DAY
    )
    mine = [(await _spawn_as(client, other, delay=_later(3600))).agent.agent_id for _ in range(5)]
    env = client.command(
        "spawn_agent",
        command_pb2.SpawnAgentBody(profile="synthetic", task="x", delay=_later(3600)),
        key=other,
        command_id="one-too-many",
    )
    failure = await _refused(
        client.stub.SpawnAgent(
            spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env), timeout=10
        )
    )
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.reason == "QUOTA_EXCEEDED"
    assert failure.metadata["limit"] == "max_queued_per_principal"
    missing = await _refused(client.get("one-too-many"))
    assert missing.code == grpc.StatusCode.NOT_FOUND  # refused before anything was stored
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert not await r.exists(SpokeKeys(SPOKE).agent("one-too-many"))
    finally:
        await r.aclose()

    # Another principal is not held up by the first one's backlog.
    theirs = await client.spawn("duration=0")
    assert (await client.wait_state(theirs.agent.agent_id, "SUCCEEDED")).state

    # A kill of a queued agent gives its place back: exactly one more fits.
    await _call(
        client, "KillAgent", "kill_agent", command_pb2.KillAgentBody(agent=mine[0]), key=other
    )
    await _spawn_as(client, other, delay=_later(3600))
    failure = await _refused(_spawn_as(client, other, delay=_later(3600)))
    assert failure.reason == "QUOTA_EXCEEDED"

    # A drain empties every principal's share.
    await _call(client, "DrainQueue", "drain_queue", command_pb2.DrainQueueBody())
    # Agents that start leave it too: five that run at once, then five far-delayed fit again.
    ran = [(await _spawn_as(client, other)).agent.agent_id for _ in range(5)]
    for agent_id in ran:
        await client.wait_state(agent_id, "SUCCEEDED")
    for _ in range(5):
        await _spawn_as(client, other, delay=_later(3600))
    assert (await _refused(_spawn_as(client, other))).reason == "QUOTA_EXCEEDED"


async def test_agents_stored_before_the_quota_existed_count_after_a_restart(
    spokeds: Any, other: keys.SigningKey, redis_url: str
) -> None:
    """A site whose waiting agents were stored by a release without quotas (no waiting set):
    a spoked counts them at start-up, so they take their principal's quota."""
    first, client = await spokeds(max_queued_per_principal=3, max_delay_s=DAY)
    for _ in range(3):
        await _spawn_as(client, other, delay=_later(3600))
    await first.stop()
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        await r.delete(SpokeKeys(SPOKE).waiting)  # as an older release left it
        await r.set(SpokeKeys(SPOKE).schema, 1)  # its schema: the step to 2 owes a full scan
        _, client = await spokeds(max_queued_per_principal=3, max_delay_s=DAY)
        async with asyncio.timeout(20):  # counted once serving has started
            while await r.zcard(SpokeKeys(SPOKE).waiting) < 3:  # noqa: ASYNC110 - in Redis
                await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    failure = await _refused(_spawn_as(client, other, delay=_later(3600)))
    assert failure.reason == "QUOTA_EXCEEDED"


async def test_a_delay_beyond_the_limit_is_refused_before_anything_is_stored(
    spokeds: Any,
) -> None:
    _, client = await spokeds(max_delay_s=60)
    ok = await client.spawn("duration=0", delay=_later(60))
    assert ok.agent.state == State.STATE_QUEUED
    env = client.command(
        "spawn_agent",
        command_pb2.SpawnAgentBody(profile="synthetic", task="x", delay=_later(61)),
        command_id="too-late",
    )
    failure = await _refused(client.spawn_env(env))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.metadata["limit"] == "max_delay_s"
    assert (await _refused(client.get("too-late"))).code == grpc.StatusCode.NOT_FOUND
    listed = (await client.list()).agent_page.agents
    assert [a.agent_id for a in listed] == [ok.agent.agent_id]


# --- re-verification before start --------------------------------------------------------


SH = {"argv": ["sh", "-c", "{task}"], "task_on_stdin": False, "unsafe": True}
PROFILES = {
    "synthetic": {},
    "sh": SH,
    "py": {"argv": [sys.executable, "-c", "{task}"], "task_on_stdin": False, "unsafe": True},
}


def _touch(path: Path) -> str:
    return f"open({str(path)!r}, 'w').close()"


async def test_an_edited_record_fails_tampered_and_the_edit_never_runs(
    spokeds: Any, redis_url: str, tmp_path: Path
) -> None:
    """Whoever can write to the spoke's Redis edits a queued record's profile and task (and
    another's timeout): the worker checks the signed spawn kept with it, ends each FAILED with
    reason TAMPERED, and runs nothing. Untouched agents, direct and relayed, still run."""
    _, client = await spokeds(profiles=PROFILES)
    await _pause(client)
    marker = tmp_path / "ran-the-edit"
    edited = await client.spawn("duration=0")
    slower = await client.spawn(_touch(tmp_path / "slow"), profile="py", timeout=_later(5))
    fine = await client.spawn(_touch(tmp_path / "direct"), profile="py")
    relayed_env = client.relay(
        client.command(
            "spawn_agent",
            command_pb2.SpawnAgentBody(profile="py", task=_touch(tmp_path / "relayed")),
        )
    )
    relayed = await client.spawn_env(relayed_env)

    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        spoke_keys = SpokeKeys(SPOKE)
        await r.hset(
            spoke_keys.agent(edited.agent.agent_id),
            mapping={"profile": "sh", "task": f"id > {marker}"},
        )
        await r.hset(spoke_keys.agent(slower.agent.agent_id), "timeout_ms", 3_600_000)
    finally:
        await r.aclose()
    await _resume(client)

    for agent in (edited, slower):
        done = await client.wait_state(agent.agent.agent_id, "FAILED", "SUCCEEDED")
        assert done.state == State.STATE_FAILED
        assert done.reason == "TAMPERED"
        assert done.attempt == 0
        assert not done.HasField("start_time")
    for agent in (fine, relayed):
        assert (await client.wait_state(agent.agent.agent_id, "SUCCEEDED", "FAILED")).state == (
            State.STATE_SUCCEEDED
        )
    assert not marker.exists()
    assert not (tmp_path / "slow").exists()
    assert (tmp_path / "direct").exists()
    assert (tmp_path / "relayed").exists()


async def test_a_spawn_whose_key_was_revoked_since_never_starts(
    spokeds: Any, other: keys.SigningKey, peers: Peers, tmp_path: Path
) -> None:
    first, client = await spokeds(profiles=PROFILES)
    await _pause(client)
    marker = tmp_path / "revoked-ran"
    queued = await _spawn_as(client, other, _touch(marker), profile="py")
    await first.stop()
    # The other client's key leaves the trust store; the spoke restarts with it.
    write_trust(
        peers.trust_file, [(peers.hub, "hub"), (peers.spoke, "spoke"), (peers.operator, "client")]
    )
    _, client = await spokeds(profiles=PROFILES)
    await _resume(client)
    done = await client.wait_state(queued.agent.agent_id, "FAILED", "SUCCEEDED")
    assert (done.state, done.reason) == (State.STATE_FAILED, "TAMPERED")
    assert not marker.exists()


# --- pages bounded by bytes -------------------------------------------------------------

LIMIT = 64 * 1024
"""The spoke's message limit in the page tests: a few long agents exceed it."""


async def _list_all(client: SpokeClient, rpc: str, body: str, make: Any) -> list[list[Any]]:
    """Every page of a listing, each checked to fit the limit."""
    pages: list[list[Any]] = []
    token = ""
    while True:
        request = getattr(spoke_service_pb2, f"SpokeService{rpc}Request")
        env = client.command(body, make(page_size=500, page_token=token))
        resp = await getattr(client.stub, rpc)(request(command=env), timeout=20)
        assert resp.ByteSize() < LIMIT
        page = commands.parse_reply(resp.reply.payload).agent_page
        assert page.agents, "every page carries at least one agent"
        pages.append(list(page.agents))
        token = page.next_page_token
        if not token:
            return pages


async def test_a_page_of_many_long_tasks_stays_under_the_message_limit_and_pages_on(
    spokeds: Any,
) -> None:
    """100 agents with 8 KiB tasks (800 KiB) on a spoke whose messages are at most 64 KiB:
    each page fits, items carry the start of their task marked truncated, and paging on
    returns every agent once; GetAgent still returns the whole task."""
    _, client = await spokeds(max_message_bytes=LIMIT, rate_burst=1000)
    await _pause(client)
    tasks = {}
    for i in range(100):
        task = f"duration=0 n={i} " + "x" * 8192
        tasks[(await client.spawn(task)).agent.agent_id] = task
    first = (await client.list(page_size=500)).agent_page
    assert 0 < len(first.agents) < 100
    assert first.next_page_token
    pages = await _list_all(client, "ListAgents", "list_agents", command_pb2.ListAgentsBody)
    assert len(pages) > 1
    items = [a for page in pages for a in page]
    assert sorted(a.agent_id for a in items) == sorted(tasks)
    for a in items:
        assert a.truncated
        assert tasks[a.agent_id].startswith(a.task)
        assert len(a.task.encode()) <= 2048
    whole = (await client.get(items[0].agent_id)).agent
    assert whole.task == tasks[whole.agent_id]
    assert not whole.truncated


async def test_a_page_of_dead_letters_with_long_tails_stays_under_the_limit(
    spokeds: Any,
) -> None:
    """Dead letters with 16 KiB output tails and 4 KiB tasks: each page fits the 64 KiB limit,
    tails keep their last bytes, and paging on returns every dead letter once."""
    _, client = await spokeds(
        max_message_bytes=LIMIT,
        output_tail_bytes=16 * 1024,  # GetAgent returns whole agents: they must fit too
        rate_burst=1000,
        retry_backoff_ms=50,
        concurrency=4,
    )
    ids = [
        (
            await client.spawn(
                f"fail output=70000 stderr=E{i} steps=0 " + "y" * 4000, max_attempts=2
            )
        ).agent.agent_id
        for i in range(12)
    ]
    for agent_id in ids:
        await client.wait_state(agent_id, "DEAD_LETTERED", within=60)
    pages = await _list_all(
        client, "ListDeadLetters", "list_dead_letters", command_pb2.ListDeadLettersBody
    )
    assert len(pages) > 1
    items = [a for page in pages for a in page]
    assert sorted(a.agent_id for a in items) == sorted(ids)
    whole = (await client.get(ids[0])).agent
    assert len(whole.stdout_tail.encode()) == 16 * 1024
    for a in items:
        assert a.truncated
        assert 0 < len(a.stdout_tail.encode()) <= 2048
    (mine,) = (a for a in items if a.agent_id == ids[0])
    assert whole.stdout_tail.endswith(mine.stdout_tail)  # a tail keeps its last bytes
    assert whole.task.startswith(mine.task)
