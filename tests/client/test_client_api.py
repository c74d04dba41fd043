"""hubspoke.client without a hub: its public names, its types, its errors, its import graph."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import grpc
import pytest

import hubspoke
from hubspoke import client, errors
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2


def test_public_names_are_pinned() -> None:
    assert sorted(client.__all__) == sorted(
        [
            "FINAL_STATES",
            "REPLY_INVALID",
            "WAITING_ON_PEOPLE",
            "Agent",
            "AgentEvent",
            "AgentList",
            "AgentPage",
            "AgentState",
            "Artifact",
            "AuditPage",
            "AuditRecord",
            "CallError",
            "CircuitState",
            "Client",
            "ClientConfig",
            "ClientConfigError",
            "EventKind",
            "FederatedQueueStats",
            "Placement",
            "PlacementCandidate",
            "OutboxItem",
            "OutboxList",
            "FeedEvent",
            "FeedKind",
            "ProfileCapacity",
            "QueueStats",
            "Receipt",
            "RunMode",
            "ShadowRun",
            "Spoke",
            "SpokeCapacity",
            "SpokeHealth",
            "SyncClient",
            "Verification",
            "client_from_config",
            "load_client_config",
        ]
    )
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_the_root_package_exports_the_client_lazily() -> None:
    assert sorted(hubspoke.__all__) == ["Agent", "AgentEvent", "Client", "Spoke", "SyncClient"]
    for name in hubspoke.__all__:
        assert getattr(hubspoke, name) is getattr(client, name)
    with pytest.raises(AttributeError):
        _ = hubspoke.nothing_here  # type: ignore[attr-defined]
    code = (
        "import sys, hubspoke; "
        "loaded = [m for m in ('hubspoke.client', 'grpc') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_client_does_not_load_the_servers() -> None:
    code = (
        "import sys; from hubspoke import Client; "
        "bad = [m for m in sys.modules if m.startswith(('hubspoke.hub', 'hubspoke.spoke'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_errors_have_the_common_root() -> None:
    err = client.CallError(grpc.StatusCode.NOT_FOUND, "no agent x", "AGENT_NOT_FOUND", {"a": "b"})
    assert isinstance(err, errors.HubspokeError)
    assert (err.code, err.reason, err.message, err.metadata) == (
        grpc.StatusCode.NOT_FOUND,
        "AGENT_NOT_FOUND",
        "no agent x",
        {"a": "b"},
    )
    assert str(err) == "no agent x [AGENT_NOT_FOUND]"
    assert str(client.CallError(grpc.StatusCode.UNAVAILABLE, "gone")) == "gone [UNAVAILABLE]"
    assert issubclass(client.ClientConfigError, errors.ConfigError)


def test_agent_reads_every_field_and_keeps_the_raw_message() -> None:
    raw = agent_pb2.Agent(
        name="spokes/s1/agents/a1",
        agent_id="a1",
        spoke="s1",
        profile="synthetic",
        state=agent_pb2.Agent.STATE_SUCCEEDED,
        exit_code=0,
        labels={"k": "v"},
        progress_percent=-1,
        receipt=agent_pb2.Receipt(
            status="completed",
            artifacts=["x"],
            verifications=[agent_pb2.VerificationItem(name="n", status="passed")],
        ),
    )
    raw.create_time.FromSeconds(1_800_000_000)
    raw.timeout.FromSeconds(30)
    agent = client.Agent.from_proto(raw)
    assert agent.raw is raw
    assert agent.state is client.AgentState.SUCCEEDED
    assert agent.state == agent_pb2.Agent.STATE_SUCCEEDED  # the wire number, too
    assert agent.final
    assert agent.exit_code == 0
    assert agent.create_time == dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC)
    assert agent.start_time is None
    assert agent.timeout == dt.timedelta(seconds=30)
    assert dict(agent.labels) == {"k": "v"}
    assert agent.receipt is not None
    assert agent.receipt.verifications == (client.Verification("n", "passed"),)
    with pytest.raises(AttributeError):
        agent.state = client.AgentState.FAILED  # type: ignore[misc]  # frozen
    bare = client.Agent.from_proto(agent_pb2.Agent(agent_id="a2"))
    assert (bare.exit_code, bare.receipt, bare.state) == (None, None, client.AgentState.UNSPECIFIED)
    assert not bare.final


def test_an_unknown_enum_number_reads_as_unspecified() -> None:
    raw = agent_pb2.AgentEvent(agent_id="a", kind=99, state=77)  # type: ignore[arg-type]  # a newer server's values
    event = client.AgentEvent.from_proto(raw)
    assert (event.kind, event.state) == (
        client.EventKind.UNSPECIFIED,
        client.AgentState.UNSPECIFIED,
    )
    assert event.raw.kind == 99


def test_spoke_queue_stats_and_pages() -> None:
    spoke = client.Spoke.from_proto(
        command_pb2.Spoke(name="s1", address="h:1", health=command_pb2.Spoke.HEALTH_READY)
    )
    assert (spoke.name, spoke.health, spoke.last_probe_time) == (
        "s1",
        client.SpokeHealth.READY,
        None,
    )
    stats = client.QueueStats.from_proto(command_pb2.QueueStats(waiting=2, paused=True))
    assert (stats.waiting, stats.paused, stats.drained) == (2, True, 0)
    cursor = "page-2"
    page = client.AgentPage.from_proto(
        command_pb2.AgentPage(agents=[agent_pb2.Agent(agent_id="a")], next_page_token=cursor)
    )
    assert [a.agent_id for a in page.agents] == ["a"]
    assert page.next_page_token == cursor


def test_state_names_parse() -> None:
    for state in client.AgentState:
        if state is not client.AgentState.UNSPECIFIED:
            assert client.AgentState.parse(state.name.lower()) is state
            assert client.AgentState.parse(f"STATE_{state.name}") is state
    for bad in ("unspecified", "asleep"):
        with pytest.raises(ValueError, match=bad):
            client.AgentState.parse(bad)
    assert {s for s in client.AgentState if s.final} == client.FINAL_STATES


def test_a_remote_hub_needs_tls() -> None:
    from hubspoke import keys
    from hubspoke.trust import TrustStore

    key = keys.generate("me")
    trust = TrustStore([])
    with pytest.raises(client.ClientConfigError, match="plaintext is allowed only on loopback"):
        client.Client("192.0.2.1:7100", "me", key, trust)
