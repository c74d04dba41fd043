"""Every RPC a live hubd and spoked serve is on an allow-list, and every one of them refuses
unsigned, forged and replayed input with the documented status (docs/protocol.md §10).

The methods come from the generated descriptors (a new RPC is covered without editing this
file) and are checked against what the servers really registered: spoked's own handler
list, and for both servers what gRPC reflection reports and which paths answer at all.
Health and reflection are the only services that take no signature; they are shown to
carry no agent data.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "scripts")]

from fuzzlib import classes as C  # noqa: E402 - after the path set-up above
from fuzzlib import federation  # noqa: E402
from fuzzlib.endpoints import SERVICES, Endpoint, discover  # noqa: E402
from fuzzlib.forge import Forge, env_raw, envelope_bytes, flip, request_bytes  # noqa: E402
from fuzzlib.runner import Runner  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENDPOINTS = discover()
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
UNSIGNED_SERVICES = {HEALTH, REFLECTION}


@pytest.fixture(scope="module")
def module_redis(redis_server_url: str) -> str:
    """The session Redis, emptied once for this module's federation."""
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server_url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(
    tmp_path_factory: pytest.TempPathFactory, module_redis: str
) -> AsyncIterator[federation.Federation]:
    f = await federation.start(tmp_path_factory.mktemp("every-method"), module_redis)
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture(scope="module")
def forge(fed: federation.Federation) -> Forge:
    import random

    return Forge(fed.keys, random.Random(4))


def _modes(ep: Endpoint) -> list[str]:
    return ["hub"] if ep.server == "hub" else ["direct", "relay"]


async def _send(fed: federation.Federation, ep: Endpoint, raw: bytes) -> tuple[str, str]:
    o = await Runner(fed, 1, progress=False).call(C.probe(ep, raw, "t", frozenset()))
    return o.code, o.reason


async def _reflect(
    channel: grpc.aio.Channel, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter(requests), timeout=10)
    return [r async for r in call]


async def _reflected_methods(channel: grpc.aio.Channel, service: str) -> set[str]:
    (resp,) = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
    )
    names: set[str] = set()
    for raw in resp.file_descriptor_response.file_descriptor_proto:
        fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        for svc in fd.service:
            if f"{fd.package}.{svc.name}" == service:
                names |= {m.name for m in svc.method}
    return names


# -- the allow-list ---------------------------------------------------------------------------


@pytest.mark.parametrize("server", sorted(SERVICES))
async def test_registered_services_and_methods_are_exactly_the_allow_list(
    fed: federation.Federation, server: str
) -> None:
    svc = SERVICES[server]
    channel = fed.channel(server)
    (listed,) = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    served = {s.name for s in listed.list_services_response.service}
    assert served == {svc.full_name} | UNSIGNED_SERVICES
    want = {m.name for m in svc.methods}
    assert await _reflected_methods(channel, svc.full_name) == want
    if server == "spoke":
        assert fed.spoke is not None
        assert set(fed.spoke.methods) == {f"/{svc.full_name}/{m}" for m in want}
    # Every allow-listed path has a handler (an empty body is parsed and refused, not
    # UNIMPLEMENTED); anything else, even a near miss, is UNIMPLEMENTED.
    for ep in (e for e in ENDPOINTS if e.server == server):
        assert (await _send(fed, ep, b""))[0] == C.INVALID, ep.key
    for path in (
        f"/{svc.full_name}/{svc.methods[0].name}Extra",
        f"/{svc.full_name.lower()}/{svc.methods[0].name.lower()}",
        f"/{SERVICES['spoke' if server == 'hub' else 'hub'].full_name}/ListSpokes",
        "/federation.v1.AdminService/Shutdown",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary(path)(b"", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, path


async def test_every_rpc_has_a_command_body() -> None:
    """A new RPC needs a Command body case, or the suites cannot build valid input for it."""
    assert [e.key for e in ENDPOINTS if e.verb is None] == []
    assert {e.key for e in ENDPOINTS if e.streaming} >= {"hub:WatchAgent", "spoke:WatchAgent"}


# -- unsigned, forged, replayed: every method, every way in -----------------------------------


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[e.key for e in ENDPOINTS])
async def test_every_method_refuses_unsigned_input(
    fed: federation.Federation, forge: Forge, ep: Endpoint
) -> None:
    before = await fed.agent_count()
    for mode in _modes(ep):
        for layer in ("outer", "inner") if mode == "relay" else ("outer",):
            client = forge.sign(forge.command(ep).SerializeToString())
            payload, ptype, _ = env_raw(client)
            bare = envelope_bytes(payload, ptype, [])
            if layer == "inner":  # a hub-signed relay around an unsigned command
                raw = forge.request(ep, forge.relay(client, inner_raw=bare))
            elif mode == "relay":
                relay_payload, relay_type, _ = env_raw(forge.relay(client))
                raw = request_bytes(envelope_bytes(relay_payload, relay_type, []))
            else:
                raw = request_bytes(bare)
            assert await _send(fed, ep, raw) == (C.UNAUTH, C.SIG), (mode, layer)
    assert await fed.agent_count() == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[e.key for e in ENDPOINTS])
async def test_every_method_refuses_forged_input(
    fed: federation.Federation, forge: Forge, ep: Endpoint
) -> None:
    before = await fed.agent_count()
    for mode in _modes(ep):
        client = forge.sign(forge.command(ep).SerializeToString())
        outer = forge.relay(client) if mode == "relay" else client
        payload, ptype, sigs = env_raw(outer)
        sig, kid = sigs[0]
        forgeries = {
            "payload bit": envelope_bytes(flip(payload, 8 * len(payload) - 1), ptype, sigs),
            "signature bit": envelope_bytes(payload, ptype, [(flip(sig, 0), kid)]),
            "fingerprint bit": envelope_bytes(payload, ptype, [(sig, flip(kid, 8 * len(kid) - 8))]),
        }
        for what, env in forgeries.items():
            assert await _send(fed, ep, request_bytes(env)) == (C.UNAUTH, C.SIG), (mode, what)
        # signed by a key no trust store lists, and by it under a trusted key's key id
        intruder = forge.sign(forge.command(ep).SerializeToString(), fed.keys.intruder)
        assert await _send(fed, ep, forge.wrap(ep, mode, intruder).raw) == (C.UNAUTH, C.SIG)
        p2, t2, ((isig, _),) = env_raw(intruder)
        posing = envelope_bytes(p2, t2, [(isig, fed.keys.operator.key_id.encode())])
        raw = (
            forge.request(ep, forge.relay(client, inner_raw=posing))
            if mode == "relay"
            else request_bytes(posing)
        )
        assert await _send(fed, ep, raw) == (C.UNAUTH, C.SIG), (mode, "posing")
        type_flip = envelope_bytes(payload, flip(ptype, 0), sigs)
        assert await _send(fed, ep, request_bytes(type_flip)) == (C.INVALID, C.BAD), mode
    assert await fed.agent_count() == before


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[e.key for e in ENDPOINTS])
async def test_every_method_refuses_a_replay(
    fed: federation.Federation, forge: Forge, ep: Endpoint
) -> None:
    before = await fed.agent_count()
    for mode in _modes(ep):
        body = None
        if ep.verb == "spawn_agent":  # UNKNOWN_PROFILE comes after the nonce is claimed
            body = forge.body("spawn_agent", profile="no-such-profile")
        built = forge.valid(ep, mode, body=body)
        first = await _send(fed, ep, built.raw)
        assert first[0] in C.PRIMER_EXPECT, (mode, first)  # accepted, changed nothing
        assert await _send(fed, ep, built.raw) == (C.UNAUTH, C.NONCE), mode
    assert await fed.agent_count() == before


# -- the only unsigned services ---------------------------------------------------------------


@pytest.mark.parametrize("server", sorted(SERVICES))
async def test_health_and_reflection_carry_no_agent_data(
    fed: federation.Federation, forge: Forge, server: str
) -> None:
    spawn = next(e for e in ENDPOINTS if e.server == "spoke" and e.verb == "spawn_agent")
    marker = b"MARKER-TASK-TEXT-4f1d"
    built = forge.valid(
        spawn, "direct", body=forge.body("spawn_agent", task=f"duration=0 {marker.decode()}")
    )
    assert (await _send(fed, spawn, built.raw))[0] == C.OK
    assert built.client is not None
    agent_id = forge_command_id(built.client.payload)
    seen = b""
    channel = fed.channel(server)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICES[server].full_name):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        seen += resp.SerializeToString()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="federation.v1.Nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    symbols = [SERVICES[server].full_name, HEALTH, REFLECTION, "federation.v1.Agent", "no.Such"]
    replies = await _reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols),
        reflection_pb2.ServerReflectionRequest(file_by_filename="federation/v1/agent.proto"),
    )
    assert all(not r.HasField("error_response") for r in replies[:-2])
    seen += b"".join(r.SerializeToString() for r in replies)
    assert b"federation.v1" in seen  # the schema, and nothing else:
    assert marker not in seen
    assert agent_id.encode() not in seen


def forge_command_id(payload: bytes) -> str:
    from hubspoke.commands import parse_command

    return parse_command(payload).command_id
