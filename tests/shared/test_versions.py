"""Versions. Schema: a daemon refuses a Redis with a newer one and migrates an older one.
Protocol: servers refuse another major and announce theirs; the hub's probe reads it.

Real redis-server (the session one), real spoked subprocesses, in-process HubApp and servers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import grpc as sgrpc
from hubspoke import keys, policy, schema, version
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.hub.app import HUB_SERVICE, HubApp
from hubspoke.hub.config import HubConfig, SpokeEntry
from hubspoke.hub.registry import SpokeRegistry
from hubspoke.hub.spoke_desk import spoke_pb as _spoke_pb
from hubspoke.hub.store import schema_key
from hubspoke.spoke.keys import SpokeKeys

SPOKE = "spoke-1"
SPOKE_SCHEMA = SpokeKeys(SPOKE).schema


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Keys, trust store and policy for a hub ``hub`` and a spoke ``spoke-1``."""
    lines = []
    for name, role in (("hub", "hub"), (SPOKE, "spoke")):
        key = keys.generate(name)
        keys.write_keypair(key, tmp_path / "keys")
        public = keys.encode_public(key.public)
        lines += ["[[peer]]", f'name = "{name}"', f'role = "{role}"', f'keys = ["{public}"]', ""]
    (tmp_path / "trust.toml").write_text("\n".join(lines))
    (tmp_path / "policy.toml").write_text(policy.ALLOW_OPERATOR_EVERYTHING)
    return tmp_path


@pytest.fixture
async def db(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _spoked(site: Path, redis_url: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "SPOKE_NAME": SPOKE,
        "SPOKE_LISTEN": "127.0.0.1:0",
        "SPOKE_KEY_FILE": str(site / "keys" / f"{SPOKE}.key"),
        "SPOKE_TRUST_FILE": str(site / "trust.toml"),
        "SPOKE_POLICY_FILE": str(site / "policy.toml"),
        "SPOKE_REDIS_URL": redis_url,
        "SPOKE_ALLOW_EVICTION": "true",
        "SPOKE_LOG_LEVEL": "error",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubspoke.spoke",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _serves_then_stops(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    assert line.startswith(b"serving "), line
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


async def test_spoked_refuses_a_redis_with_a_newer_schema(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    await db.set(SPOKE_SCHEMA, version.SPOKE_SCHEMA_VERSION + 1)
    await db.zadd(SpokeKeys(SPOKE).agent_index, {"a1": 1})
    proc = await _spoked(site, redis_url)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert stdout == b""
    text = stderr.decode()
    assert text.count("\n") == 1, text
    newer, ours = version.SPOKE_SCHEMA_VERSION + 1, version.SPOKE_SCHEMA_VERSION
    assert text.startswith(f"Error: spoke {SPOKE}: its Redis holds schema version {newer}"), text
    assert f"newer than the {ours} this hubspoke understands" in text
    assert await db.get(SPOKE_SCHEMA) == str(version.SPOKE_SCHEMA_VERSION + 1)  # untouched


async def test_spoked_refuses_a_schema_key_that_is_not_a_version(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    await db.set(SPOKE_SCHEMA, "v2-beta")
    proc = await _spoked(site, redis_url)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 2
    assert "not a schema version" in stderr.decode()


async def test_spoked_migrates_an_unversioned_site_and_stamps_a_fresh_one(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    # An older spoked's data (the agent index, a nonce), no schema key: version 0.
    nonce = SpokeKeys(SPOKE).nonce("operator", "00")
    await db.zadd(SpokeKeys(SPOKE).agent_index, {"a1": 1})
    await db.set(nonce, "1", ex=600)
    await _serves_then_stops(await _spoked(site, redis_url))
    assert await db.get(SPOKE_SCHEMA) == str(version.SPOKE_SCHEMA_VERSION)
    assert await db.get(nonce) == "1"  # the step 0 -> 1 moves nothing

    await db.flushdb()
    await _serves_then_stops(await _spoked(site, redis_url))
    assert await db.get(SPOKE_SCHEMA) == str(version.SPOKE_SCHEMA_VERSION)


def _hub_config(site: Path, redis_url: str) -> HubConfig:
    return HubConfig(
        listen="127.0.0.1:0",
        key_file=site / "keys" / "hub.key",
        trust_file=site / "trust.toml",
        policy_file=site / "policy.toml",
        redis_url=redis_url,
    )


async def test_hub_refuses_a_newer_schema_and_migrates_an_older_one(
    site: Path, redis_url: str, db: redis.asyncio.Redis
) -> None:
    key = schema_key("hub")
    await db.set(key, 7)
    app = HubApp(_hub_config(site, redis_url))
    with pytest.raises(version.SchemaVersionError, match="schema version 7"):
        await app.start()
    assert await db.get(key) == "7"

    await db.delete(key)
    await db.set("federation:hub:hub:nonce:operator:00", "1", ex=60)  # an older hub's data
    async with HubApp(_hub_config(site, redis_url)):
        assert await db.get(key) == str(version.HUB_SCHEMA_VERSION)


async def test_migrations_run_in_order_and_record_each_step(db: redis.asyncio.Redis) -> None:
    ran: list[int] = []

    def step(n: int) -> schema.Migration:
        async def run(client: redis.asyncio.Redis) -> None:
            assert await client.get("t:schema") == str(n)  # the key moves after each step
            ran.append(n)

        return run

    async def has_data() -> bool:
        return True

    await db.set("t:schema", 1)
    state = await schema.ensure_schema(
        db, "t:schema", 3, {n: step(n) for n in range(3)}, owner="test", has_data=has_data
    )
    assert (state.found, state.current, state.migrated, ran) == (1, 3, (1, 2), [1, 2])
    again = await schema.ensure_schema(db, "t:schema", 3, {}, owner="test", has_data=has_data)
    assert again.migrated == ()


# -- the protocol version handshake ------------------------------------------------------------


class _PeerHealth(health_aio.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """A spoke of another protocol: it refuses ours, or serves but announces its own."""

    def __init__(self, refuse: bool) -> None:
        super().__init__()
        self.refuse = refuse

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if self.refuse:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "speaks protocol 2")
        await context.send_initial_metadata(((version.PROTOCOL_METADATA_KEY, "2"),))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class _NeverCalled:
    """A servicer whose methods must not run: the protocol check comes first."""

    def __getattr__(self, name: str) -> Any:
        async def method(request: Any, context: Any) -> Any:
            raise AssertionError(f"{name} ran despite another protocol version")

        return method


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, int]]:
    """Our own server (built as both daemons build theirs) and two peers of protocol 2."""
    service = sgrpc.Service(HUB_SERVICE, _NeverCalled())
    ours = sgrpc.build_server([service], "127.0.0.1:0", sgrpc.ServerOptions())
    started: list[grpc.aio.Server] = [ours.server]
    ports = {"ours": ours.port}
    for name, refuse in (("refuses", True), ("announces-2", False)):
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(_PeerHealth(refuse), server)
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        started.append(server)
    for server in started:
        await server.start()
    await ours.serving([])
    try:
        yield ports
    finally:
        for server in started:
            await server.stop(None)


async def test_a_server_refuses_another_major_and_announces_its_own(
    servers: dict[str, int],
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{servers['ours']}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(request, timeout=5, metadata=((version.PROTOCOL_METADATA_KEY, "2"),))
        failure = sgrpc.from_rpc_error(info.value)
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "PROTOCOL_VERSION_MISMATCH"
        assert "speaks hubspoke protocol '2', this side speaks 1" in failure.message
        for metadata in (version.CALL_METADATA, ((version.PROTOCOL_METADATA_KEY, "1.7"),), None):
            call = health.Check(request, timeout=5, metadata=metadata)
            assert (await call).status == health_pb2.HealthCheckResponse.SERVING
            assert version.peer_protocol(await call.initial_metadata()) == "1"
        # Our own services refuse it the same way, before they look at the request.
        list_spokes = channel.unary_unary("/federation.v1.HubService/ListSpokes")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await list_spokes(b"", timeout=5, metadata=((version.PROTOCOL_METADATA_KEY, "3"),))
        failure = sgrpc.from_rpc_error(info.value)
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "PROTOCOL_VERSION_MISMATCH",
        )


async def test_the_hub_probe_is_the_handshake(servers: dict[str, int]) -> None:
    entries = [SpokeEntry(name, f"127.0.0.1:{port}") for name, port in servers.items()]
    registry = SpokeRegistry(entries, sgrpc.ServerOptions())
    try:
        probes = {p.entry.name: p for p in await registry.probe_all(5.0)}
    finally:
        await registry.close()
    got = {n: (p.ready, p.incompatible, p.protocol) for n, p in probes.items()}
    assert got == {
        "ours": (True, False, 1),
        "refuses": (False, True, 0),
        "announces-2": (False, True, 2),
    }
    health = {n: command_pb2.Spoke.Health.Name(_spoke_pb(p).health) for n, p in probes.items()}
    assert health == {
        "ours": "HEALTH_READY",
        "refuses": "HEALTH_INCOMPATIBLE",
        "announces-2": "HEALTH_INCOMPATIBLE",
    }
    assert _spoke_pb(probes["ours"]).protocol_version == 1
