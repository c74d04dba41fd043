"""Store and forward (issue 11) through real hubd, spoked, Redis and hubctl processes: while a
spoke is stopped (SIGSTOP) the hub holds spawns and kills in its outbox and answers for them
itself; when the spoke is back (SIGCONT) it delivers them, kills first, each exactly once; a
spawn whose start deadline passes in the outbox ends EXPIRED/UNDELIVERED and never runs.
tests/e2e/test_partition.py does the same across a network namespace with its link down."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubspoke import testing
from hubspoke.client import Agent, AgentState, Client
from hubspoke.testing import until

from .conftest import SPOKE, stoppable_federation

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    async with stoppable_federation(tmp_path / "fed", redis_url=redis_url) as federation:
        yield federation


async def _state(client: Client, agent: str) -> Agent:
    return await client.get(agent, SPOKE)


def _marker(tmp: Path, name: str) -> str:
    return f"echo ran >> {tmp / name}"


async def test_held_while_stopped_then_delivered_once(
    fed: testing.Federation, tmp_path: Path
) -> None:
    async with fed.client() as client:
        running = await client.spawn(SPOKE, "synthetic", "duration=120 steps=4")
        await until(lambda: _is(client, running.agent_id, AgentState.RUNNING))

        fed.spoked(SPOKE).signal(signal.SIGSTOP)
        later = await client.spawn(SPOKE, "shell", _marker(tmp_path, "later"))
        assert later.state == AgentState.PENDING_DELIVERY
        assert later.raw.reason.startswith("SPOKE_UNREACHABLE")
        again = await client.spawn(
            SPOKE, "shell", _marker(tmp_path, "later"), command_id=later.agent_id
        )
        assert again.agent_id == later.agent_id
        assert again.state == AgentState.PENDING_DELIVERY
        doomed = await client.spawn(SPOKE, "shell", _marker(tmp_path, "doomed"))
        killed = await client.kill(doomed.agent_id, SPOKE)
        assert killed.state == AgentState.KILLED
        assert killed.reason == "KILLED_BEFORE_DELIVERY"
        held_kill = await client.kill(running.agent_id, SPOKE)
        assert held_kill.kill_pending
        assert (await _state(client, running.agent_id)).kill_pending
        # By bare id: the index and the outbox's lookups come from one script read with the
        # admission (hub/index_lookup.py); the answers are the same.
        assert (await client.get(later.agent_id)).state == AgentState.PENDING_DELIVERY
        assert (await client.get(doomed.agent_id)).reason == "KILLED_BEFORE_DELIVERY"
        assert (await client.get(running.agent_id)).kill_pending

        held = await client.outbox(SPOKE)
        assert [(i.kind, i.agent) for i in held.items] == [
            ("kill", running.agent_id),
            ("spawn", later.agent_id),
        ]
        listed = await fed.hubctl("--json", "spokes")
        assert listed.code == 0, listed.stderr
        assert listed.doc()["spokes"][0]["outbox_depth"] == 2
        table = await fed.hubctl("outbox", "list")
        assert "kill" in table.stdout
        assert later.agent_id in table.stdout

        # Spawned last: its 2 s deadline must not pass before the checks above (a busy
        # machine's hubctl takes seconds), since the outbox ends it EXPIRED while it waits.
        hurried = await client.spawn(
            SPOKE, "shell", _marker(tmp_path, "hurried"), start_within_s=2.0
        )
        assert hurried.state == AgentState.PENDING_DELIVERY

        await until(lambda: _is(client, hurried.agent_id, AgentState.EXPIRED))
        expired = await _state(client, hurried.agent_id)
        assert expired.reason == "UNDELIVERED"

        fed.spoked(SPOKE).signal(signal.SIGCONT)
        await until(lambda: _is(client, later.agent_id, AgentState.SUCCEEDED))
        await until(lambda: _is(client, running.agent_id, AgentState.KILLED))
        assert (await client.outbox(SPOKE)).total == 0
        assert (tmp_path / "later").read_text() == "ran\n"
        assert not (tmp_path / "hurried").exists()
        assert not (tmp_path / "doomed").exists()
        # The spoke itself signs the delivered agent now; the others stay the hub's answer.
        assert (await _state(client, later.agent_id)).raw.issuer == "operator"
        assert (await _state(client, doomed.agent_id)).state == AgentState.KILLED


async def _is(client: Client, agent: str, state: AgentState) -> bool:
    return (await _state(client, agent)).state == state
