"""Several stateless hubds on one Redis (issue 11), as real processes: a client given both
addresses keeps working when one hubd is SIGKILLed mid-burst, retrying each spawn with its
command id, and exactly one agent runs per id; commands held in the outbox through the dead
hubd are delivered by the other one."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hubspoke import testing
from hubspoke.client import Agent, AgentState, CallError, Client
from hubspoke.testing import until

from .conftest import SPOKE, stoppable_federation

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    async with stoppable_federation(tmp_path / "fed", redis_url=redis_url) as federation:
        yield federation


async def _spawn(client: Client, cid: str, task: str) -> Agent:
    """Send until answered, as a client with its own retry loop would (same command id)."""
    for _ in range(50):
        try:
            return await client.spawn(SPOKE, "shell", task, command_id=cid)
        except CallError as exc:
            if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
        await asyncio.sleep(0.2)
    raise AssertionError(f"{cid} never answered")


async def _all_final(client: Client, ids: list[str]) -> bool:
    """One list command per poll: a status command per agent per poll ran into the spoke's
    rate limit for the operator (50/s) on a slow machine."""
    try:
        listed = await client.list(SPOKE, page_size=len(ids) + 10)
    except CallError as exc:  # the spoke's circuit, open while it was stopped: ask again
        if exc.code is not grpc.StatusCode.UNAVAILABLE:
            raise
        return False
    states = {a.agent_id: a.state for a in listed.agents}
    return all(cid in states and states[cid].final for cid in ids)


async def test_a_hubd_killed_mid_burst_loses_and_doubles_nothing(
    fed: testing.Federation, tmp_path: Path
) -> None:
    second = await fed.start_hub("hub-2")
    ledger = tmp_path / "ledger"
    ids = [f"burst-{i:03d}" for i in range(60)]
    async with fed.client(timeout_s=3, hub=f"{fed.hub_address},{second.address}") as client:
        tasks = []
        for n, cid in enumerate(ids):
            tasks.append(asyncio.create_task(_spawn(client, cid, f"echo {cid} >> {ledger}")))
            if n == 25:
                fed.hub.signal(signal.SIGKILL)
            await asyncio.sleep(0.02)
        answered = await asyncio.gather(*tasks)
        assert {a.agent_id for a in answered} == set(ids)
        await until(lambda: _all_final(client, ids))
        states = Counter([(await client.get(cid, SPOKE)).state for cid in ids])
        audit = await client.audit_log(page_size=500)
    served_by = {r.hub for r in audit.records if r.action == "SpawnAgent" and r.outcome == "OK"}
    assert len(served_by) == 2, served_by  # both hubds took spawns of the burst
    assert states == {AgentState.SUCCEEDED: len(ids)}
    runs = Counter(ledger.read_text().split())
    assert runs == dict.fromkeys(ids, 1), runs - Counter(ids)


async def test_the_outbox_of_a_dead_hubd_is_delivered_by_the_other(
    fed: testing.Federation, tmp_path: Path
) -> None:
    second = await fed.start_hub("hub-2")
    ledger = tmp_path / "ledger"
    ids = [f"held-{i}" for i in range(5)]
    async with fed.client(timeout_s=3) as first, fed.client(hub=second.address) as other:
        fed.spoked(SPOKE).signal(signal.SIGSTOP)
        held = [await _spawn(first, cid, f"echo {cid} >> {ledger}") for cid in ids]
        assert {a.state for a in held} == {AgentState.PENDING_DELIVERY}
        fed.hub.signal(signal.SIGKILL)
        fed.spoked(SPOKE).signal(signal.SIGCONT)
        await until(lambda: _all_final(other, ids))
        states = Counter([(await other.get(cid, SPOKE)).state for cid in ids])
        assert (await other.outbox()).total == 0
    assert states == {AgentState.SUCCEEDED: len(ids)}
    assert Counter(ledger.read_text().split()) == dict.fromkeys(ids, 1)
