"""A real hub in front of a real spoke, on one real Redis: through hubspoke.client and hubctl.

Every hop verifies a signature: hubctl/Client → hub (client command), hub → spoke (Relay),
spoke → hub → client (the spoke's signed reply, checked by both).
"""

from __future__ import annotations

import grpc
import pytest

from hubspoke import client as hc
from hubspoke.gen.federation.v1 import agent_pb2

from .conftest import Federation, wait_final, wait_state

Agent = agent_pb2.Agent
pytestmark = pytest.mark.slow


# -- through Client -------------------------------------------------------------------------


async def test_spawn_runs_to_success(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.2 steps=2")
        assert agent.spoke == "spoke-1"
        assert agent.name == f"spokes/spoke-1/agents/{agent.agent_id}"
        final = await wait_final(client, agent.agent_id)
    assert final.state == Agent.STATE_SUCCEEDED
    assert final.exit_code == 0
    assert final.receipt.status == "completed"


async def test_kill_a_running_agent(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=30")
        await wait_state(client, agent.agent_id, Agent.STATE_RUNNING)
        killed = await client.kill(agent.agent_id)
        final = await wait_final(client, agent.agent_id)
    assert final.state == Agent.STATE_KILLED
    assert killed.agent_id == agent.agent_id


async def test_same_command_id_twice_is_one_agent(federation: Federation) -> None:
    async with federation.client() as client:
        first = await client.spawn("spoke-1", "synthetic", "duration=0.1", command_id="cmd-twice")
        second = await client.spawn("spoke-1", "synthetic", "duration=0.1", command_id="cmd-twice")
        listed = await client.list("spoke-1")
    assert first.agent_id == second.agent_id == "cmd-twice"
    assert [a.agent_id for a in listed.agents].count("cmd-twice") == 1


async def test_unknown_agent_is_not_found(federation: Federation) -> None:
    async with federation.client() as client:
        with pytest.raises(hc.CallError) as via_hub:
            await client.get("never-spawned")
        with pytest.raises(hc.CallError) as via_spoke:
            await client.kill("never-spawned", "spoke-1")
    assert via_hub.value.code == grpc.StatusCode.NOT_FOUND
    assert via_spoke.value.code == grpc.StatusCode.NOT_FOUND


async def test_spokes_and_list_everywhere(federation: Federation) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.1")
        spokes = await client.spokes()
        everywhere = await client.list()
    assert [(s.name, s.health) for s in spokes] == [("spoke-1", hc.SpokeHealth.READY)]
    assert agent.agent_id in [a.agent_id for a in everywhere.agents]
    assert everywhere.unreachable_spokes == []


# -- through the hubctl subprocess ----------------------------------------------------------


async def test_hubctl_spawn_wait_status_list_kill(federation: Federation) -> None:
    code, doc, err = await federation.hubctl(
        "spawn", "--spoke", "spoke-1", "--id", "cli-ok", "--json", "--wait", "--", "duration=0.2"
    )
    assert code == 0, err
    assert (doc["agent_id"], doc["spoke"], doc["state"], doc["exit_code"]) == (
        "cli-ok",
        "spoke-1",
        "SUCCEEDED",
        0,
    )
    assert "stdout_tail" in doc

    code, doc, err = await federation.hubctl("status", "cli-ok", "--json")
    assert code == 0, err
    assert doc["state"] == "SUCCEEDED"

    code, doc, err = await federation.hubctl("--json", "list", "--state", "succeeded")
    assert code == 0, err
    assert [a["agent_id"] for a in doc["agents"]] == ["cli-ok"]
    assert doc["unreachable_spokes"] == []

    code, _, err = await federation.hubctl("kill", "cli-ok")
    assert code == 1  # FAILED_PRECONDITION: it already ended
    assert err.startswith("Error: ")
    assert err.rstrip().endswith("[AGENT_NOT_RUNNING]")

    code, doc, err = await federation.hubctl("--json", "spokes")
    assert code == 0, err
    assert doc["spokes"][0]["health"] == "READY"
    # The table shows state, last seen, capacity, profiles and version (issue 10).
    code, text, err = await federation.hubctl("spokes")
    assert code == 0, err
    header, row = text.splitlines()[:2]
    for column in ("HEALTH", "LAST SEEN", "CAPACITY", "PROFILES", "VERSION", "LABELS"):
        assert column in header
    assert "synthetic" in row
    assert "(protocol 1)" in row


async def test_hubctl_exit_codes(federation: Federation) -> None:
    code, doc, err = await federation.hubctl(
        "spawn", "--spoke", "spoke-1", "--json", "--wait", "--", "duration=0.1", "fail"
    )
    assert code == 1, err
    assert doc["state"] == "FAILED"
    assert doc["exit_code"] == 1

    code, _, err = await federation.hubctl("status", "never-spawned")
    assert code == 3
    assert err.rstrip().endswith("[AGENT_NOT_FOUND]")

    code, _, err = await federation.hubctl("spawn", "--spoke", "nowhere", "--", "x")
    assert code == 3
    assert err.rstrip().endswith("[SPOKE_NOT_FOUND]")

    code, out, err = await federation.hubctl(
        "spawn", "--spoke", "spoke-1", "-q", "--", "duration=30"
    )
    assert code == 0, err
    agent_id = out.strip()
    code, doc, err = await federation.hubctl("kill", agent_id, "--json")
    assert code == 0, err
    assert doc["agent_id"] == agent_id
    assert doc["state"] in {"KILLED", "QUEUED", "STARTING", "RUNNING"}
