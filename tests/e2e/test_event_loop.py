"""The ``event_loop`` option (issue 13): uvloop by default where installed; hubd and spoked on
uvloop serve, relay, run and kill agents (supervised: the supervisor's posix_spawn and pidfd
path too) as on asyncio's loop, and each says in its log which loop it runs on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubspoke import event_loop, testing
from hubspoke.client import AgentState, Client
from hubspoke.hub.config import HubConfig
from hubspoke.spoke.config import SpokeConfig

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def uv_federation(tmp_path: Path) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(
        tmp_path / "fed",
        ["spoke-1"],
        hub_env={"HUB_EVENT_LOOP": "uvloop"},
        spoke_env={"SPOKE_EVENT_LOOP": "uvloop"},
    )
    try:
        await federation.start()
        yield federation
    finally:
        await federation.stop()


def test_uvloop_is_the_default_where_it_is_installed() -> None:
    assert SpokeConfig().event_loop == "uvloop"
    assert HubConfig.load(None, {"HUB_KEY_FILE": "/k", "HUB_TRUST_FILE": "/t"}).event_loop == (
        "uvloop"
    )
    assert event_loop.run(_loop_name(), "uvloop") == "uvloop.Loop"
    assert event_loop.run(_loop_name(), "asyncio") != "uvloop.Loop"


async def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__name__}"


def _loops(logs: Path) -> dict[str, str]:
    """Each daemon's log (by file name) -> the ``event_loop`` line it wrote."""
    found: dict[str, str] = {}
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "event_loop" in line:
                found[log.stem] = line
    return found


async def _is(client: Client, agent_id: str, want: AgentState) -> bool:
    return (await client.get(agent_id)).state is want


async def test_hubd_and_spoked_on_uvloop_run_and_kill_agents(
    uv_federation: testing.Federation,
) -> None:
    fed = uv_federation
    loops = _loops(fed.logs)
    assert len(loops) == 2, loops  # the hubd and the spoked
    assert all("uvloop.Loop" in line for line in loops.values()), loops
    async with fed.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.2 steps=2")
        done = await client.wait(agent, timeout=30)
        assert done.state is AgentState.SUCCEEDED, done
        assert done.exit_code == 0
        long = await client.spawn("spoke-1", "synthetic", "duration=60")
        await testing.until(
            lambda: _is(client, long.agent_id, AgentState.RUNNING), 20, "RUNNING on uvloop"
        )
        await client.kill(long.agent_id)
        killed = await client.wait(long, timeout=30)
        assert killed.state is AgentState.KILLED, killed
