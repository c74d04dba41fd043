"""A real HubApp on 127.0.0.1:0 with a real Redis, called through real channels.

Spokes here are test doubles at the process edge: small SpokeService servers that verify the
hub's Relay exactly as a spoke must and answer signed replies (or misbehave on purpose), plus
a configured spoke whose port refuses connections. End-to-end runs with the real spoke live
in tests/e2e.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import client as hc
from hubspoke import commands, envelope, errors, keys, testing
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import (
    agent_pb2,
    command_pb2,
    hub_service_pb2,
    hub_service_pb2_grpc,
    spoke_service_pb2,
)
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig, SpokeEntry
from hubspoke.hub.federation_files import FederationFiles, write_federation
from hubspoke.hub.store import nonce_key
from hubspoke.trust import Role, TrustStore

REPO = Path(__file__).resolve().parents[2]
SPOKE_SERVICE = spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"]
Agent = agent_pb2.Agent


# -- a spoke test double -------------------------------------------------------------------


@dataclass
class FakeSpoke:
    """Verifies Relays like a spoke must (hub-signed, for me, wrapping a client-signed command)."""

    name: str
    key: keys.SigningKey
    trust: TrustStore
    agents: dict[str, Agent] = field(default_factory=dict)
    relays: list[command_pb2.Relay] = field(default_factory=list)
    fail_with: errors.CommandError | None = None
    tamper: str = ""  # "", "digest", "signer"
    impostor: keys.SigningKey | None = None

    def _open(
        self, env: command_pb2.SignedEnvelope
    ) -> tuple[command_pb2.Command, command_pb2.SignedEnvelope]:
        v = envelope.verify(
            env, payload_type=envelope.PAYLOAD_TYPE_RELAY, trust=self.trust, roles={Role.HUB}
        )
        relay = commands.parse_relay(v.payload)
        assert relay.issuer == v.peer == "hub"
        assert relay.audience == self.name
        commands.check_window(relay.issue_time, relay.expire_time, relay.nonce, commands.Window())
        inner = envelope.verify(
            relay.command,
            payload_type=envelope.PAYLOAD_TYPE_COMMAND,
            trust=self.trust,
            roles={Role.CLIENT},
        )
        self.relays.append(relay)
        if self.fail_with is not None:
            raise self.fail_with
        return commands.parse_command(inner.payload), relay.command

    def _reply(
        self, cmd_env: command_pb2.SignedEnvelope, cmd: command_pb2.Command, **result: Any
    ) -> command_pb2.SignedEnvelope:
        digest = commands.digest(cmd_env.payload)
        if self.tamper == "digest":
            digest = commands.digest(b"something else")
        reply = command_pb2.Reply(
            command_id=cmd.command_id,
            responder=self.name,
            request_digest=digest,
            issue_time=commands.to_timestamp(commands.now()),
            **result,
        )
        signer = self.impostor if self.tamper == "signer" and self.impostor else self.key
        return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, signer)

    def _find(self, agent: str) -> Agent:
        found = self.agents.get(agent.rpartition("/")[2])
        if found is None:
            raise errors.AgentNotFoundError(f"no agent {agent}")
        return found

    async def SpawnAgent(self, request: Any, context: Any) -> Any:
        cmd, inner = self._open(request.command)
        agent = self.agents.setdefault(
            cmd.command_id,
            Agent(
                name=f"spokes/{self.name}/agents/{cmd.command_id}",
                agent_id=cmd.command_id,
                spoke=self.name,
                profile=cmd.spawn_agent.profile,
                task=cmd.spawn_agent.task,
                issuer=cmd.issuer,
                state=Agent.STATE_QUEUED,
            ),
        )
        reply = self._reply(inner, cmd, agent=agent)
        return spoke_service_pb2.SpokeServiceSpawnAgentResponse(reply=reply)

    async def GetAgent(self, request: Any, context: Any) -> Any:
        cmd, inner = self._open(request.command)
        agent = self._find(cmd.get_agent.agent)
        reply = self._reply(inner, cmd, agent=agent)
        return spoke_service_pb2.SpokeServiceGetAgentResponse(reply=reply)

    async def KillAgent(self, request: Any, context: Any) -> Any:
        cmd, inner = self._open(request.command)
        agent = self._find(cmd.kill_agent.agent)
        if agent.state in hc.FINAL_STATES:
            raise errors.AgentNotRunningError("agent already ended")
        agent.state = Agent.STATE_KILLED
        reply = self._reply(inner, cmd, agent=agent)
        return spoke_service_pb2.SpokeServiceKillAgentResponse(reply=reply)

    async def ListAgents(self, request: Any, context: Any) -> Any:
        cmd, inner = self._open(request.command)
        page = command_pb2.AgentPage(agents=list(self.agents.values()))
        reply = self._reply(inner, cmd, agent_page=page)
        return spoke_service_pb2.SpokeServiceListAgentsResponse(reply=reply)

    def __getattr__(self, rpc: str) -> Any:
        """Every other SpokeService RPC answers UNIMPLEMENTED (the hub does not relay them)."""
        method = SPOKE_SERVICE.methods_by_name.get(rpc)
        if method is None:
            raise AttributeError(rpc)
        failure = errors.RemoteCallError(
            grpc.StatusCode.UNIMPLEMENTED, "UNIMPLEMENTED", f"{rpc} is not faked", {}
        )

        async def unary(request: Any, context: Any) -> Any:
            raise failure

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            raise failure
            yield  # an async generator, as the transport expects for streams

        return stream if method.server_streaming else unary


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def refused_address() -> Iterator[str]:
    """An address that refuses connections: the port is bound (so no one else takes it),
    never listened on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@dataclass
class Fed:
    files: FederationFiles
    config: HubConfig
    app: HubApp
    spokes: dict[str, FakeSpoke]
    operator: keys.SigningKey
    trust: TrustStore
    channel: grpc.aio.Channel

    @property
    def stub(self) -> hub_service_pb2_grpc.HubServiceAsyncStub:
        return hub_service_pb2_grpc.HubServiceStub(self.channel)

    def client(self, timeout_s: float = 10.0) -> hc.Client:
        return hc.Client(
            f"127.0.0.1:{self.app.port}", "operator", self.operator, self.trust, "hub", timeout_s
        )

    def command(
        self,
        audience: str = "hub",
        *,
        issuer: str = "operator",
        at: dt.datetime | None = None,
        validity: dt.timedelta = commands.DEFAULT_VALIDITY,
        command_id: str | None = None,
    ) -> command_pb2.Command:
        return commands.build_command(
            issuer=issuer, audience=audience, at=at, validity=validity, command_id=command_id
        )


async def _start_fake(fake: FakeSpoke) -> sgrpc.BuiltServer:
    built = sgrpc.build_server(
        [sgrpc.Service(SPOKE_SERVICE, fake)], "127.0.0.1:0", sgrpc.ServerOptions()
    )
    await built.server.start()
    await built.serving([SPOKE_SERVICE.full_name])
    return built


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str, refused_address: str) -> AsyncIterator[Fed]:
    """The production hub in this process, dialling two fake spokes and a dead address."""
    names = ["spoke-1", "spoke-2", "dead"]
    harness = testing.InProcessFederation(tmp_path, names, redis_url=redis_url)
    servers: list[sgrpc.BuiltServer] = []
    try:
        files = await harness.prepare()
        impostor = harness.key("spoke-2")
        fakes = {
            n: FakeSpoke(n, harness.key(n), harness.trust, impostor=impostor) for n in names[:2]
        }
        for fake in fakes.values():
            servers.append(await _start_fake(fake))
        addresses = {n: f"127.0.0.1:{s.port}" for n, s in zip(fakes, servers, strict=True)}
        addresses["dead"] = refused_address
        app = await harness.start_hub(
            # Port 0: tests start more hubs from this config beside it.
            configure=lambda config: config.replace(
                listen="127.0.0.1:0",
                spokes=tuple(SpokeEntry(n, addresses[n], {"site": n}) for n in names),
                spoke_call_timeout_s=2.0,
            )
        )
        channel = sgrpc.open_channel(f"127.0.0.1:{app.port}")
        try:
            yield Fed(
                files=files,
                config=app.config,
                app=app,
                spokes=fakes,
                operator=harness.operator,
                trust=harness.trust,
                channel=channel,
            )
        finally:
            await channel.close(None)
    finally:
        await harness.stop()
        for s in servers:
            await s.stop(None)


async def call_fails(coro: Any) -> sgrpc.CallFailure:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return sgrpc.from_rpc_error(info.value)


def spawn_request(env: command_pb2.SignedEnvelope) -> hub_service_pb2.HubServiceSpawnAgentRequest:
    return hub_service_pb2.HubServiceSpawnAgentRequest(command=env)


def list_spokes_env(
    fed: Fed, cmd: command_pb2.Command | None = None, key: keys.SigningKey | None = None
) -> command_pb2.SignedEnvelope:
    cmd = cmd or fed.command()
    cmd.list_spokes.SetInParent()
    return commands.sign_command(cmd, key or fed.operator)


# -- inbound checks -------------------------------------------------------------------------


async def test_list_spokes_is_signed_by_the_hub_and_shows_health(fed: Fed) -> None:
    async with fed.client() as client:
        spokes = await client.spokes()
    by_name = {s.name: s for s in spokes}
    assert [s.name for s in spokes] == ["spoke-1", "spoke-2", "dead"]
    assert by_name["spoke-1"].health == command_pb2.Spoke.HEALTH_READY
    assert by_name["dead"].health == command_pb2.Spoke.HEALTH_UNREACHABLE
    assert dict(by_name["dead"].labels) == {"site": "dead"}
    assert by_name["dead"].address == fed.config.spoke("dead").address  # type: ignore[union-attr]  # configured
    assert by_name["dead"].raw.last_probe_time.seconds > 0


async def test_health_is_serving(fed: Fed) -> None:
    health = health_pb2_grpc.HealthStub(fed.channel)
    resp = await health.Check(
        health_pb2.HealthCheckRequest(service="federation.v1.HubService"), timeout=2
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_forged_signature_is_unauthenticated(fed: Fed) -> None:
    env = list_spokes_env(fed)
    sig = bytearray(env.signatures[0].sig)
    sig[0] ^= 1
    env.signatures[0].sig = bytes(sig)
    req = hub_service_pb2.HubServiceListSpokesRequest(command=env)
    failure = await call_fails(fed.stub.ListSpokes(req, timeout=5))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "SIGNATURE_INVALID"


async def test_tampered_payload_is_unauthenticated(fed: Fed) -> None:
    env = list_spokes_env(fed)
    env.payload = env.payload[:-1] + bytes([env.payload[-1] ^ 1])
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_key_is_unauthenticated(fed: Fed) -> None:
    env = list_spokes_env(fed, key=keys.generate("operator"))
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SIGNATURE_INVALID")


async def test_a_spoke_key_cannot_act_as_a_client(fed: Fed) -> None:
    spoke_key = fed.spokes["spoke-1"].key
    env = list_spokes_env(fed, fed.command(issuer="spoke-1"), key=spoke_key)
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


async def test_issuer_must_be_the_signer(fed: Fed) -> None:
    env = list_spokes_env(fed, fed.command(issuer="someone-else"))
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert "issuer does not match" in failure.message


async def test_expired_command_is_unauthenticated(fed: Fed) -> None:
    old = commands.now() - dt.timedelta(hours=2)
    env = list_spokes_env(fed, fed.command(at=old))
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "COMMAND_EXPIRED")


async def test_replayed_nonce_is_unauthenticated(
    fed: Fed, redis_client: redis.asyncio.Redis
) -> None:
    env = list_spokes_env(fed)
    req = hub_service_pb2.HubServiceListSpokesRequest(command=env)
    await fed.stub.ListSpokes(req, timeout=5)
    failure = await call_fails(fed.stub.ListSpokes(req, timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "NONCE_REUSED")
    cmd = commands.parse_command(env.payload)
    key = nonce_key("hub", "operator", cmd.nonce)  # tagged per principal (hub/store.py)
    ttl_ms = await redis_client.pttl(key)
    # Kept until the command expires plus the allowed skew, not forever.
    assert 0 < ttl_ms <= (commands.DEFAULT_VALIDITY.total_seconds() + fed.config.max_skew_s) * 1000


async def test_validity_window_longer_than_allowed_is_invalid(fed: Fed) -> None:
    env = list_spokes_env(fed, fed.command(validity=dt.timedelta(hours=3)))
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_garbage_bytes_are_invalid_argument(fed: Fed) -> None:
    raw = fed.channel.unary_unary(  # type: ignore[call-arg]  # stubs make the serializers required
        "/federation.v1.HubService/SpawnAgent"
    )
    failure = await call_fails(raw(b"\xff\xff garbage", timeout=5))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_COMMAND")


async def test_empty_body_is_invalid_argument(fed: Fed) -> None:
    raw = fed.channel.unary_unary(  # type: ignore[call-arg]  # stubs make the serializers required
        "/federation.v1.HubService/SpawnAgent"
    )
    failure = await call_fails(raw(b"", timeout=5))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.message == "request carries no command envelope"


async def test_envelope_of_another_payload_type_is_invalid(fed: Fed) -> None:
    cmd = fed.command("spoke-1")
    cmd.spawn_agent.profile = "synthetic"
    env = envelope.sign(cmd.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, fed.operator)
    failure = await call_fails(fed.stub.SpawnAgent(spawn_request(env), timeout=5))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_command_without_body_is_invalid(fed: Fed) -> None:
    env = commands.sign_command(fed.command("spoke-1"), fed.operator)
    failure = await call_fails(fed.stub.SpawnAgent(spawn_request(env), timeout=5))
    assert (failure.code, failure.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "command has no body",
    )


async def test_body_must_fit_the_rpc(fed: Fed) -> None:
    cmd = fed.command("spoke-1")
    cmd.get_agent.agent = "x"
    failure = await call_fails(
        fed.stub.SpawnAgent(spawn_request(commands.sign_command(cmd, fed.operator)), timeout=5)
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not fit" in failure.message


async def test_bad_command_id_is_invalid(fed: Fed) -> None:
    env = list_spokes_env(fed, fed.command(command_id="no spaces allowed"))
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_spokes_must_address_the_hub(fed: Fed) -> None:
    env = list_spokes_env(fed, fed.command("spoke-1"))
    failure = await call_fails(
        fed.stub.ListSpokes(hub_service_pb2.HubServiceListSpokesRequest(command=env), timeout=5)
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT


# -- routing --------------------------------------------------------------------------------


async def test_unknown_spoke_is_not_found(fed: Fed) -> None:
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.spawn("nowhere", "synthetic", "hello")
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.NOT_FOUND, "SPOKE_NOT_FOUND")


async def test_spawn_needs_a_spoke(fed: Fed) -> None:
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.spawn("hub", "synthetic", "hello")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spawn needs a spoke" in info.value.message


async def test_unreachable_spoke_is_unavailable_after_retries(fed: Fed) -> None:
    """With the outbox off (outbox_enabled = false), a spawn to a spoke nobody answers for
    fails UNAVAILABLE after the client's retries, as before store and forward."""
    cfg = fed.config.replace(outbox_enabled=False, listen="127.0.0.1:0")
    async with HubApp(cfg) as app:
        client = hc.Client(f"127.0.0.1:{app.port}", "operator", fed.operator, fed.trust, "hub", 5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with client:
            with pytest.raises(hc.CallError) as info:
                await client.spawn("dead", "synthetic", "hello")
    assert (info.value.code, info.value.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "SPOKE_UNAVAILABLE",
    )
    assert "spoke dead is unreachable" in info.value.message
    assert loop.time() - started >= 0.6  # two backoffs: 0.2 s + 0.4 s


async def test_a_spawn_to_an_unreachable_spoke_is_held_and_answered_by_the_hub(
    fed: Fed,
) -> None:
    """With the outbox (the default) the same spawn is held: the hub answers, signed by
    itself, PENDING_DELIVERY, and status by id finds it (tests/e2e/test_outbox.py delivers)."""
    async with fed.client() as client:
        held = await client.spawn("dead", "synthetic", "hello")
        again = await client.get(held.agent_id)
        outbox = await client.outbox("dead")
    assert held.state == hc.AgentState.PENDING_DELIVERY
    assert held.spoke == "dead"
    assert again.state == hc.AgentState.PENDING_DELIVERY
    assert [(i.kind, i.agent) for i in outbox.items] == [("spawn", held.agent_id)]


async def test_spawn_relays_the_client_envelope_unchanged(
    fed: Fed, redis_client: redis.asyncio.Redis
) -> None:
    cmd = fed.command("spoke-1", command_id="cmd-relay-1")
    cmd.spawn_agent.profile = "synthetic"
    cmd.spawn_agent.task = "hello"
    env = commands.sign_command(cmd, fed.operator)
    resp = await fed.stub.SpawnAgent(spawn_request(env), timeout=5)
    [relay] = fed.spokes["spoke-1"].relays
    assert relay.command == env
    assert relay.issuer == "hub"
    validity = commands.from_timestamp(relay.expire_time) - commands.from_timestamp(
        relay.issue_time
    )
    assert validity == dt.timedelta(seconds=fed.config.relay_validity_s)
    # The spoke's envelope comes back intact, so the client can verify it end to end.
    v = envelope.verify(
        resp.reply, payload_type=envelope.PAYLOAD_TYPE_REPLY, trust=fed.trust, roles={Role.SPOKE}
    )
    assert v.peer == "spoke-1"
    assert commands.parse_reply(v.payload).request_digest == commands.digest(env.payload)
    # Routed once, remembered for a week (the index is keyed by spoke and id).
    assert await redis_client.hkeys("federation:hub:hub:agent-at:cmd-relay-1") == [b"spoke-1"]
    ttl = await redis_client.ttl("federation:hub:hub:agent-at:cmd-relay-1")
    assert 7 * 86400 - 60 < ttl <= 7 * 86400


async def test_spawn_then_get_and_kill_through_the_agent_index(fed: Fed) -> None:
    async with fed.client() as client:
        agent = await client.spawn("spoke-2", "synthetic", "work", command_id="cmd-idx-1")
        assert (agent.agent_id, agent.spoke, agent.state) == (
            "cmd-idx-1",
            "spoke-2",
            Agent.STATE_QUEUED,
        )
        got = await client.get("cmd-idx-1")
        killed = await client.kill("cmd-idx-1")
    assert got.agent_id == "cmd-idx-1"
    assert killed.state == Agent.STATE_KILLED
    # The index sent get and kill straight to spoke-2; spoke-1 never heard of them.
    assert fed.spokes["spoke-1"].relays == []
    assert len(fed.spokes["spoke-2"].relays) == 3


async def test_resource_name_routes_to_its_spoke(fed: Fed) -> None:
    fed.spokes["spoke-2"].agents["a1"] = Agent(
        agent_id="a1", spoke="spoke-2", state=Agent.STATE_RUNNING
    )
    async with fed.client() as client:
        got = await client.get("spokes/spoke-2/agents/a1")
        with pytest.raises(hc.CallError) as info:
            await client.get("spokes/nowhere/agents/a1")
    assert got.agent_id == "a1"
    assert fed.spokes["spoke-1"].relays == []
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_index_miss_asks_every_spoke(fed: Fed, redis_client: redis.asyncio.Redis) -> None:
    fed.spokes["spoke-2"].agents["a2"] = Agent(
        agent_id="a2", spoke="spoke-2", state=Agent.STATE_RUNNING
    )
    async with fed.client() as client:
        got = await client.get("a2")
    assert got.spoke == "spoke-2"
    # Found by asking: the answer is remembered for next time.
    assert await redis_client.hkeys("federation:hub:hub:agent-at:a2") == [b"spoke-2"]


async def test_unknown_agent_with_an_unreachable_spoke_is_unavailable(fed: Fed) -> None:
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.get("never-spawned")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "dead" in info.value.message


async def test_unknown_agent_is_not_found(fed: Fed, refused_address: str) -> None:
    cfg = fed.config.replace(spokes=fed.config.spokes[:2], listen="127.0.0.1:0")
    async with HubApp(cfg) as app:
        client = hc.Client(f"127.0.0.1:{app.port}", "operator", fed.operator, fed.trust, "hub", 5)
        async with client:
            with pytest.raises(hc.CallError) as info:
                await client.get("never-spawned")
            with pytest.raises(hc.CallError) as on_spoke:
                await client.get("never-spawned", "spoke-1")
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.NOT_FOUND, "AGENT_NOT_FOUND")
    assert (on_spoke.value.code, on_spoke.value.reason) == (
        grpc.StatusCode.NOT_FOUND,
        "AGENT_NOT_FOUND",
    )


async def test_list_everywhere_reports_unreachable_spokes(fed: Fed) -> None:
    fed.spokes["spoke-1"].agents["a1"] = Agent(agent_id="a1", spoke="spoke-1")
    fed.spokes["spoke-2"].agents["a2"] = Agent(agent_id="a2", spoke="spoke-2")
    async with fed.client() as client:
        everywhere = await client.list()
        one = await client.list("spoke-2")
    assert sorted(a.agent_id for a in everywhere.agents) == ["a1", "a2"]
    assert everywhere.unreachable_spokes == ["dead"]
    assert [a.agent_id for a in one.agents] == ["a2"]
    assert one.unreachable_spokes == []


async def test_spoke_errors_pass_through_with_code_and_reason(fed: Fed) -> None:
    fed.spokes["spoke-1"].fail_with = errors.CapacityExceededError("spoke is full", limit="4")
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.spawn("spoke-1", "synthetic", "x")
    err = info.value
    assert (err.code, err.reason, err.message) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CAPACITY_EXCEEDED",
        "unverified error from spoke spoke-1: spoke is full",  # spoke errors are not signed
    )
    assert err.metadata == {"limit": "4", "unverified": "spoke-1"}


async def test_kill_of_a_finished_agent_passes_the_spokes_answer_through(fed: Fed) -> None:
    fed.spokes["spoke-1"].agents["done"] = Agent(
        agent_id="done", spoke="spoke-1", state=Agent.STATE_SUCCEEDED
    )
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.kill("spokes/spoke-1/agents/done")
    assert (info.value.code, info.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "AGENT_NOT_RUNNING",
    )


async def test_a_kill_of_an_unindexed_agent_is_never_fanned_out(fed: Fed) -> None:
    """The same id may exist on two spokes: a kill is only sent where the hub knows it is."""
    for name in fed.spokes:
        fed.spokes[name].agents["twin"] = Agent(
            agent_id="twin", spoke=name, state=Agent.STATE_RUNNING
        )
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.kill("twin")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert all(s.agents["twin"].state == Agent.STATE_RUNNING for s in fed.spokes.values())


@pytest.mark.parametrize("tamper", ["digest", "signer"])
async def test_a_reply_that_fails_verification_is_internal(fed: Fed, tamper: str) -> None:
    fed.spokes["spoke-1"].tamper = tamper
    async with fed.client() as client:
        with pytest.raises(hc.CallError) as info:
            await client.spawn("spoke-1", "synthetic", "x")
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.INTERNAL, "SPOKE_REPLY_INVALID")


async def test_client_rejects_a_reply_not_bound_to_its_command(fed: Fed) -> None:
    """The client's own check: a valid spoke reply to another command is refused."""
    async with fed.client() as client:
        await client.spawn("spoke-1", "synthetic", "x", command_id="cmd-a")
        other = fed.command("spoke-1", command_id="cmd-b")
        other.get_agent.agent = "cmd-a"
        resp = await fed.stub.GetAgent(
            hub_service_pb2.HubServiceGetAgentRequest(
                command=commands.sign_command(other, fed.operator)
            ),
            timeout=5,
        )
        mine = fed.command("spoke-1", command_id="cmd-c")
        sent = hc._session.Sent(mine, commands.sign_command(mine, fed.operator))
        with pytest.raises(hc.CallError) as info:
            client._agent_reply(sent, resp.reply, "spoke-1")
    assert info.value.reason == "REPLY_INVALID"


# -- backend and lifecycle ------------------------------------------------------------------


async def test_redis_down_is_unavailable(fed: Fed, refused_address: str) -> None:
    cfg = fed.config.replace(redis_url=f"redis://{refused_address}/0", listen="127.0.0.1:0")
    async with HubApp(cfg) as app:
        channel = sgrpc.open_channel(f"127.0.0.1:{app.port}")
        try:
            stub = hub_service_pb2_grpc.HubServiceStub(channel)
            req = hub_service_pb2.HubServiceListSpokesRequest(command=list_spokes_env(fed))
            failure = await call_fails(stub.ListSpokes(req, timeout=5))
        finally:
            await channel.close(None)
    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")


async def test_shutdown_is_idempotent_and_stops_serving(fed: Fed) -> None:
    cfg = fed.config.replace(listen="127.0.0.1:0")
    app = HubApp(cfg)
    port = await app.start()
    assert app.port == port
    await app.shutdown()
    await app.shutdown()
    channel = sgrpc.open_channel(f"127.0.0.1:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
    finally:
        await channel.close(None)


async def test_a_taken_port_fails_start_cleanly(fed: Fed) -> None:
    taken = fed.config.replace(listen=f"127.0.0.1:{fed.app.port}")
    with pytest.raises(OSError, match="could not bind"):
        await HubApp(taken).start()


async def test_run_stops_on_request(fed: Fed) -> None:
    app = HubApp(fed.config.replace(listen="127.0.0.1:0"))
    serving = asyncio.Event()
    task = asyncio.create_task(app.run(on_serving=lambda _port: serving.set()))
    await asyncio.wait_for(serving.wait(), 10)
    app.request_stop()
    await asyncio.wait_for(task, 10)


def test_hubd_prints_serving_and_stops_on_sigterm(tmp_path: Path, redis_url: str) -> None:
    files = write_federation(tmp_path, [], "127.0.0.1:0", redis_url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hubspoke.hub",
            "--config",
            str(files.hub_config),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + (proc.stderr.read() if proc.stderr else "")
        port = int(line.split()[1])
        assert port > 0
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "hubspoke.hub.cli",
                "--config",
                str(files.hubctl_config),
                "--hub",
                f"127.0.0.1:{port}",
                "--json",
                "spokes",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert '"spokes": []' in done.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_hubd_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "hub.toml"
    bad.write_text('key_file = "k"\ntrust_file = "t"\nbogus = 1\n')
    done = subprocess.run(
        [sys.executable, "-m", "hubspoke.hub", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"Error: {bad}: unknown option 'bogus'"]


async def test_metrics_count_calls_spoke_calls_and_rejected_replies(
    fed: Fed, scrape_metrics: Callable[[int], Awaitable[Any]]
) -> None:
    app = HubApp(fed.config.replace(metrics_listen="127.0.0.1:0"))
    await app.start()
    try:
        assert app.metrics_port
        client = hc.Client(
            f"127.0.0.1:{app.port}", "operator", fed.operator, fed.trust, "hub", 10.0
        )
        async with client:
            await client.spawn("spoke-1", "synthetic", "x")
            fed.spokes["spoke-1"].tamper = "signer"
            with pytest.raises(hc.CallError):
                await client.spawn("spoke-1", "synthetic", "y")
        m = await scrape_metrics(app.metrics_port)
    finally:
        await app.shutdown()
    spawn = "/federation.v1.HubService/SpawnAgent"
    assert m.value("hubspoke_rpcs_total", method=spawn, code="OK", reason="") == 1
    assert (
        m.value("hubspoke_rpcs_total", method=spawn, code="INTERNAL", reason="SPOKE_REPLY_INVALID")
        == 1
    )
    # Both calls reached the spoke and were answered; the hub refused the second answer.
    assert m.value("hubspoke_spoke_calls_total", spoke="spoke-1", code="OK") == 2
    assert m.value("hubspoke_spoke_call_duration_seconds_count", spoke="spoke-1") == 2
    assert m.value("hubspoke_spoke_replies_rejected_total", spoke="spoke-1") == 1


async def test_hub_metrics_are_off_unless_configured(fed: Fed) -> None:
    assert fed.app.metrics_port is None
