"""hubspoke.client and hubctl against a real hub and spoke: wait, the sync client, and
agent output that carries escape sequences (shown escaped, kept exact in --json)."""

from __future__ import annotations

import asyncio

import pytest

from hubspoke.client import AgentState, Client, EventKind, SyncClient

from .conftest import Federation

pytestmark = pytest.mark.slow

# Erase the line, return to its start and print a state the agent did not reach.
TRICK = r"printf 'state     FAILED\033[2K\rstate     SUCCEEDED\n'; exit 3"


def _client(federation: Federation) -> Client:
    return Client.from_config(federation.files.hubctl_config, hub=federation.hub_address, env={})


async def test_hubctl_status_and_watch_show_agent_output_escaped(federation: Federation) -> None:
    async with _client(federation) as client:
        agent = await client.spawn("spoke-1", "shell", TRICK)
        final = await client.wait(agent, timeout=30)
    assert final.state == AgentState.FAILED
    assert "\x1b[2K\r" in final.stdout_tail  # the client returns what the agent printed

    code, out, err = await federation.hubctl("status", agent.agent_id)
    assert code == 0, err
    assert "\x1b" not in out
    assert "\r" not in out
    assert "state     FAILED (EXIT_NONZERO)" in out
    assert "state     FAILED\\x1b[2K\\rstate     SUCCEEDED" in out

    code, out, err = await federation.hubctl("watch", agent.agent_id)
    assert code == 1, err  # the agent failed
    assert "\x1b" not in out + err
    assert "\\x1b[2K\\rstate     SUCCEEDED" in out

    code, doc, err = await federation.hubctl("status", agent.agent_id, "--json")
    assert code == 0, err
    assert doc["stdout_tail"] == final.stdout_tail  # --json stays exact


async def test_wait_returns_the_final_agent(federation: Federation) -> None:
    async with _client(federation) as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.3 steps=2")
        final = await client.wait(agent.agent_id, timeout=30)
        again = await client.wait(final)  # already final: returned as is
        assert again is final
        slow = await client.spawn("spoke-1", "synthetic", "duration=30")
        with pytest.raises(TimeoutError):
            await client.wait(slow, timeout=0.5)
        await client.kill(slow.agent_id)
    assert (final.agent_id, final.state, final.exit_code) == (
        agent.agent_id,
        AgentState.SUCCEEDED,
        0,
    )
    assert final.receipt is not None
    assert final.receipt.status == "completed"
    assert final.raw.agent_id == agent.agent_id


async def test_the_sync_client_spawns_watches_and_waits(federation: Federation) -> None:
    """In a thread of its own, as code without an event loop would use it (the hub and
    spoke of the fixture serve on this test's loop)."""

    def use() -> tuple[list[EventKind], AgentState, list[str], list[str]]:
        with SyncClient.from_config(
            federation.files.hubctl_config, hub=federation.hub_address, env={}
        ) as client:
            agent = client.spawn("spoke-1", "synthetic", "duration=0.2 steps=1")
            kinds = [e.kind for e in client.watch(agent.agent_id)]
            final = client.wait(agent, timeout=30)
            listed = client.list("spoke-1")
            spokes = client.spokes()
        assert final.agent_id == agent.agent_id
        return kinds, final.state, [a.agent_id for a in listed.agents], [s.name for s in spokes]

    kinds, state, listed, spokes = await asyncio.wait_for(asyncio.to_thread(use), 60)
    assert EventKind.STATE in kinds
    assert state == AgentState.SUCCEEDED
    assert len(listed) == 1
    assert spokes == ["spoke-1"]
