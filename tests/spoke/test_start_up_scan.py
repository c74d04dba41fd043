"""spoked's start-up scan (spoke/start_up_scan.py, issue 13): it reads the index of two-step
writes in flight (spoke/job_pending.py), not the backlog; the scan of every record (quota
recount, start-deadline back-fill, orphaned jobs) runs once per site, after the schema step
1 -> 2; and no orphan is missed: a spoked SIGKILLed between the two steps of a write finds the
job added after its restart."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from google.protobuf import duration_pb2

from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2
from hubspoke.grpc import open_channel
from hubspoke.spoke import held_scan, index_walk, job_pending, start_up_scan
from hubspoke.spoke.backend import QueueFullError, now_ms
from hubspoke.spoke.config import SpokeConfigError
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.spoke.model import AgentState
from hubspoke.spoke.queue import AgentQueue
from hubspoke.spoke.schema import ensure_spoke_schema
from hubspoke.testing import Federation
from hubspoke.version import SPOKE_SCHEMA_VERSION

from .conftest import (
    SPAWN_REQUEST,
    SPOKE,
    Peers,
    SpokeClient,
    command_calls,
    spoke_config,
    spoke_mapping,
)
from .test_recovery import SpokedProcess, write_spoke_toml

S = AgentState
BACKLOG = 1500
PACING = start_up_scan.Pacing(batch=500, pause_s=0.0)

REQ = SPAWN_REQUEST


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[AgentQueue]:
    queue = AgentQueue(redis_url, "spoke-s")
    await queue.jobs.pause()
    try:
        yield queue
    finally:
        await queue.close()


async def _reads(q: AgentQueue, *commands: str) -> int:
    """Calls of these commands (default: the record reads HMGET, HGET, HGETALL) Redis served
    so far, scripts' included."""
    return await command_calls(q.redis, *(commands or ("hmget", "hget", "hgetall")))


async def _job_exists(q: AgentQueue, agent_id: str) -> bool:
    rec = await q.records.get(agent_id)
    return (await q.jobs.exist([rec.job_id or SpokeKeys.job_id(agent_id)]))[0]


async def test_the_full_scan_runs_once_after_the_schema_step_then_never_again(
    q: AgentQueue,
) -> None:
    # A site written by a schema 1 release: records without quota members, start deadlines
    # or (one of them) its job.
    future = now_ms() + 3_600_000
    for n in range(BACKLOG):
        await q.create(dataclasses.replace(REQ, agent_id=f"bg-{n}", expire_ms=future), 10**6)
    await q.jobs.remove(SpokeKeys.job_id("bg-7"))
    await q.redis.delete(q.keys.waiting, q.keys.start_deadlines, q.keys.full_scan_owed)
    await q.redis.set(q.keys.schema, 1)

    state = await ensure_spoke_schema(q.redis, q.keys)
    assert (state.found, state.current, state.migrated) == (1, SPOKE_SCHEMA_VERSION, (1,))
    assert await q.redis.exists(q.keys.full_scan_owed)

    done = await start_up_scan.run(q, PACING)
    assert (done.full, done.records, done.requeued) == (True, BACKLOG, 1)
    assert await q.records.waiting_of("operator") == BACKLOG  # the quota recount
    assert await q.redis.zcard(q.keys.start_deadlines) == BACKLOG  # the back-fill
    assert await _job_exists(q, "bg-7")
    assert not await q.redis.exists(q.keys.full_scan_owed)

    # Every later start reads the index of two-step writes, not the 1,500 records.
    before = await _reads(q)
    again = await start_up_scan.run(q, PACING)
    assert (again.full, again.records, again.marks, again.requeued) == (False, 0, 0, 0)
    assert await _reads(q) - before < 10
    # A fresh site owes nothing.
    await q.redis.delete(q.keys.schema)
    await q.redis.flushall()
    state = await ensure_spoke_schema(q.redis, q.keys)
    assert state.found is None
    assert not await q.redis.exists(q.keys.full_scan_owed)


async def test_two_step_writes_leave_no_mark_once_done_or_refused(q: AgentQueue) -> None:
    delayed = dataclasses.replace(REQ, agent_id="later", delay_ms=60_000)
    rec, created = await q.create(delayed, 10**6)
    assert created
    assert rec.state is S.QUEUED
    assert await _job_exists(q, "later")
    held = dataclasses.replace(REQ, agent_id="held", approvals_required=1, approvers=("boss",))
    assert (await q.create(held, 10**6))[0].state is S.AWAITING_APPROVAL
    with pytest.raises(QueueFullError):
        await q.create(dataclasses.replace(delayed, agent_id="refused"), 0)
    await q.create(dataclasses.replace(REQ, agent_id="failed"), 10**6)
    await q.records.transition("failed", [S.QUEUED], S.STARTING)
    await q.records.transition("failed", [S.STARTING], S.FAILED)
    await q.replay("failed", "replay-1", now_ms() + 60_000)
    assert await _job_exists(q, "failed")
    assert await q.redis.zcard(q.keys.job_pending) == 0


async def test_a_write_cut_between_its_steps_is_healed_and_its_mark_goes_once_old(
    q: AgentQueue,
) -> None:
    """What a crash leaves (the mark and the first step, not the second), for each kind of
    two-step write: the scan adds the job (or holds the agent); the marks stay while they may
    be a live spoked's, and go once older than ``LIVE_MARK_GRACE_MS``."""
    # A delayed spawn: the record only.
    await job_pending.mark(q.redis, q.keys, "later")
    await q.records.insert(dataclasses.replace(REQ, agent_id="later", delay_ms=60_000), 10**6)
    # A spawn held for approvals: stored QUEUED, never held.
    await job_pending.mark(q.redis, q.keys, "held")
    held = dataclasses.replace(REQ, agent_id="held", approvals_required=1, approvers=("boss",))
    await q.records.insert(held, 10**6)
    # A replay (a transition to QUEUED with a new job id), without its job.
    await q.create(dataclasses.replace(REQ, agent_id="replayed"), 10**6)
    await q.records.transition("replayed", [S.QUEUED], S.STARTING)
    await q.records.transition("replayed", [S.STARTING], S.FAILED)
    await job_pending.mark(q.redis, q.keys, "replayed")
    new_job = SpokeKeys.replay_job_id("replayed", 1)
    await q.records.transition("replayed", [S.FAILED], S.QUEUED, "REPLAYED", {"job_id": new_job})
    # A mark whose write never reached Redis.
    await job_pending.mark(q.redis, q.keys, "never")
    assert not await _job_exists(q, "later")
    assert not await _job_exists(q, "replayed")

    done = await start_up_scan.run(q, PACING)
    assert (done.full, done.marks, done.requeued) == (False, 4, 2)
    assert await _job_exists(q, "later")
    assert await _job_exists(q, "replayed")
    held_rec = await q.records.get("held")
    assert held_rec.state is S.AWAITING_APPROVAL
    assert not await _job_exists(q, "held")
    assert await q.redis.zcard(q.keys.job_pending) == 4  # young: maybe a live write's

    old = now_ms() - job_pending.LIVE_MARK_GRACE_MS - 1
    members: list[bytes] = await q.redis.zrange(q.keys.job_pending, 0, -1)
    await q.redis.zadd(q.keys.job_pending, dict.fromkeys(members, old))
    again = await start_up_scan.run(q, PACING)
    assert (again.marks, again.requeued) == (4, 0)
    assert await q.redis.zcard(q.keys.job_pending) == 0


# --- a real spoked, SIGKILLed between the two steps --------------------------------------


@dataclasses.dataclass
class Gate:
    """A TCP relay to Redis that holds, and never forwards, the first write matching
    ``pattern`` and everything its connection sends after it."""

    pattern: re.Pattern[bytes]
    armed: bool = True
    held: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    writers: list[asyncio.StreamWriter] = dataclasses.field(default_factory=list)

    async def pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        frozen = False
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if up and (frozen or (self.armed and self.pattern.search(data))):
                    frozen = True
                    self.held.set()
                    continue
                dst.write(data)
                await dst.drain()
        dst.close()


@contextlib.asynccontextmanager
async def gate(url: str, pattern: re.Pattern[bytes]) -> AsyncIterator[tuple[str, Gate]]:
    target = urlparse(url)
    g = Gate(pattern)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(target.hostname, target.port)
        g.writers += [writer, up_w]
        g.tasks += [
            asyncio.create_task(g.pump(reader, up_w, True)),
            asyncio.create_task(g.pump(up_r, writer, False)),
        ]

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}{target.path}", g
    finally:
        server.close()
        for w in g.writers:
            w.close()
        for t in g.tasks:
            t.cancel()
        await asyncio.gather(*g.tasks, return_exceptions=True)


async def _until(check: Any, within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state is in Redis
            await asyncio.sleep(0.05)


async def _replay(client: SpokeClient, agent_id: str) -> Any:
    env = client.command("replay_agent", command_pb2.ReplayAgentBody(agent=agent_id))
    return await client.stub.ReplayAgent(
        spoke_service_pb2.SpokeServiceReplayAgentRequest(command=env), timeout=10
    )


@pytest.mark.parametrize("write", ["delayed spawn", "replay"])
async def test_a_spoked_killed_between_record_and_job_finds_the_job_added_after_restart(
    peers: Peers, redis_url: str, tmp_path: Path, write: str
) -> None:
    """A delayed spawn stores its record, then adds its job in a second round trip (bullmq's
    add, on bullmq's own connection); so does a replay (a transition to QUEUED, then the new
    job). That add is held in a TCP gate, spoked is SIGKILLed there, and a new spoked on the
    same Redis adds the job: the record is not orphaned."""
    q = AgentQueue(redis_url, SPOKE)
    agent_id = "cut-between"
    job_data = re.compile(rb'"agent_id":\s*"' + agent_id.encode() + rb'"')
    spoked: SpokedProcess | None = None
    try:
        async with gate(redis_url, job_data) as (gated_url, g):
            raw: dict[str, Any] = spoke_mapping(peers, gated_url)
            spoked = SpokedProcess(write_spoke_toml(tmp_path / "gated.toml", raw))
            await spoked.start()
            channel = open_channel(f"127.0.0.1:{spoked.port}")
            client = SpokeClient(channel, peers)
            if write == "replay":  # an agent that failed: its first job passes the gate
                g.armed = False
                await client.spawn("fail", command_id=agent_id)
                await client.wait_state(agent_id, "FAILED")
                g.armed = True
                call = asyncio.ensure_future(_replay(client, agent_id))
            else:
                delay = duration_pb2.Duration(seconds=60)
                call = asyncio.ensure_future(
                    client.spawn("duration=0.1", command_id=agent_id, delay=delay)
                )
            await asyncio.wait_for(g.held.wait(), 20)
            await spoked.kill()  # between the record (written) and its job (held in the gate)
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            await channel.close(None)
        rec = await q.records.get(agent_id)
        assert rec.state is S.QUEUED
        assert not await _job_exists(q, agent_id)
        assert await q.redis.zcard(q.keys.job_pending) == 1
        await q.jobs.pause()  # the restarted spoked must add the job, not run it

        spoked = SpokedProcess(
            write_spoke_toml(tmp_path / "direct.toml", spoke_mapping(peers, redis_url))
        )
        await spoked.start()

        async def healed() -> bool:
            return await _job_exists(q, agent_id)

        await _until(healed)
        assert (await q.records.get(agent_id)).state is S.QUEUED
    finally:
        if spoked is not None:
            await spoked.stop()
        await q.close()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("start_up_scan_batch", 0, "start_up_scan_batch must be positive"),
        ("start_up_scan_pause_ms", -1, "start_up_scan_pause_ms must not be negative"),
    ],
)
def test_the_scan_pacing_options_are_checked(
    peers: Peers, option: str, value: int, message: str
) -> None:
    with pytest.raises(SpokeConfigError, match=message):
        spoke_config(peers, "redis://127.0.0.1:6379/0", **{option: value})
    paced = start_up_scan.Pacing.of(spoke_config(peers, "redis://127.0.0.1:6379/0"))
    assert paced == start_up_scan.Pacing(batch=100, pause_s=0.025)


async def test_a_restarted_spoked_reads_no_record_of_its_backlog(tmp_path: Path) -> None:
    """A real spoked restarted on 1,500 queued agents: its start-up scan (done once its log
    says ``requeue_done``) reads no record; the scan of every record read each one (1,500
    HMGETs and as many scripts). (The worker's look for held agents reads each state with
    HGET inside one script per 1,000 records, spoke/held_scan.py: not counted here.)"""
    fed = Federation(tmp_path / "fed", ["spoke-1"], ready_timeout_s=30)
    try:
        await fed.start(hub=False)
        q = AgentQueue(fed.redis_access("spoke-1"), "spoke-1")
        try:
            await q.jobs.pause()
            for n in range(BACKLOG):
                await q.create(dataclasses.replace(REQ, agent_id=f"bg-{n}"), 10**6)
            log = fed.logs / "spoke-1.log"
            await fed.spoked("spoke-1").stop()
            before = await _reads(q, "hmget", "evalsha")
            await fed.spoked("spoke-1").start()

            async def scanned() -> bool:
                return log.read_text(errors="replace").count('"requeue_done"') >= 2

            await _until(scanned)
            assert await _reads(q, "hmget", "evalsha") - before < 50
            done = [line for line in log.read_text().splitlines() if '"requeue_done"' in line]
            assert '"full_scan": false' in done[-1]
        finally:
            await q.close()
    finally:
        await fed.stop()


async def test_the_walks_read_every_record_once_across_equal_create_times(q: AgentQueue) -> None:
    """The walk of the agent index (the full scan's, and the held agents') goes by
    create time from a cursor: steps smaller than a run of equal create times still read
    each record once."""
    for n in range(10):
        await q.create(dataclasses.replace(REQ, agent_id=f"w-{n}"), 10**6)
    await q.redis.zadd(q.keys.agent_index, {f"w-{n}": 5 if n < 7 else 9 for n in range(10)})
    for n in (0, 4, 6, 9):
        await q.records.transition(f"w-{n}", [S.QUEUED], S.STARTING)
    await q.records.transition("w-4", [S.STARTING], S.RUNNING)
    seen = [i async for ids in index_walk.walk(q.redis, q.keys, 3) for i in ids]
    assert sorted(seen) == [f"w-{n}" for n in range(10)]
    held = await held_scan.held_ids(q.redis, q.keys, step=3)
    assert sorted(held) == ["w-0", "w-4", "w-6", "w-9"]
    assert sorted(r.agent_id for r in await q.records.held_agents()) == sorted(held)
