"""A real spoke on an ephemeral port with a real Redis, and helpers to sign commands to it."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from hubspoke import commands, envelope, keys, policy
from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2, spoke_service_pb2_grpc
from hubspoke.grpc import open_channel
from hubspoke.spoke.app import SpokeApp
from hubspoke.spoke.config import SpokeConfig
from hubspoke.spoke.model import SpawnRequest

from ..round_trips import RoundTrips, count_round_trips

SPOKE = "spoke-1"

SPAWN_REQUEST = SpawnRequest(
    agent_id="x",
    issuer="operator",
    profile="synthetic",
    task="x",
    priority=5,
    timeout_ms=1000,
    max_attempts=1,
    labels={},
    digest="d",
    expire_ms=0,
    envelope=b"e",
)
"""A stored spawn for tests that write agents through ``AgentQueue.create`` directly
(``dataclasses.replace`` it per agent)."""


async def command_calls(r: Any, *commands: str) -> int:
    """Calls of these Redis commands (lower case) the server has run so far, commands run
    inside scripts included (``INFO commandstats``). ``r`` is a redis-py asyncio client."""
    stats = await r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


@dataclass
class Peers:
    hub: keys.SigningKey
    spoke: keys.SigningKey
    operator: keys.SigningKey
    intruder: keys.SigningKey
    trust_file: Path
    key_dir: Path


def write_trust(path: Path, peers: list[tuple[keys.SigningKey, str]]) -> None:
    lines = []
    for key, role in peers:
        lines += [
            "[[peer]]",
            f'name = "{key.name}"',
            f'role = "{role}"',
            f'keys = ["{keys.encode_public(key.public)}"]',
            "",
        ]
    path.write_text("\n".join(lines))


@pytest.fixture
def peers(tmp_path: Path) -> Peers:
    kdir = tmp_path / "keys"
    made = {n: keys.generate(n) for n in ("hub", SPOKE, "operator", "intruder")}
    for k in made.values():
        keys.write_keypair(k, kdir)
    trust = tmp_path / "trust.toml"
    write_trust(trust, [(made["hub"], "hub"), (made[SPOKE], "spoke"), (made["operator"], "client")])
    (tmp_path / "policy.toml").write_text(policy.ALLOW_OPERATOR_EVERYTHING)
    return Peers(made["hub"], made[SPOKE], made["operator"], made["intruder"], trust, kdir)


def spoke_config(peers: Peers, redis_url: str = "", **overrides: Any) -> SpokeConfig:
    return SpokeConfig.from_mapping(spoke_mapping(peers, redis_url, **overrides), peers.key_dir)


def spoke_mapping(peers: Peers, redis_url: str, **overrides: Any) -> dict[str, Any]:
    """The TOML table a test spoke runs with (also written to files for spoked processes)."""
    raw: dict[str, Any] = {
        "name": SPOKE,
        "listen": "127.0.0.1:0",
        "key_file": str(peers.key_dir / f"{SPOKE}.key"),
        "trust_file": str(peers.trust_file),
        "policy_file": str(peers.trust_file.parent / "policy.toml"),
        "redis_url": redis_url,
        "profiles": {
            "synthetic": {},
            "shell": {
                "argv": ["sh", "-c", "{task}"],
                "task_on_stdin": False,
                "unsafe": True,
                "kill_grace_seconds": 1.0,
            },
        },
        "stalled_interval_ms": 1000,
        "lock_duration_ms": 4000,
    }
    raw.update(overrides)
    return raw


class SpokeClient:
    """Signs commands as a client (or relays as a hub) and calls a live spoke."""

    def __init__(self, channel: grpc.aio.Channel, peers: Peers) -> None:
        self.channel = channel
        self.stub = spoke_service_pb2_grpc.SpokeServiceStub(channel)
        self.peers = peers

    def command(
        self,
        body: str,
        msg: Any,
        *,
        key: keys.SigningKey | None = None,
        audience: str = SPOKE,
        command_id: str | None = None,
        at: dt.datetime | None = None,
    ) -> command_pb2.SignedEnvelope:
        key = key or self.peers.operator
        cmd = commands.build_command(
            issuer=key.name, audience=audience, command_id=command_id, at=at
        )
        getattr(cmd, body).CopyFrom(msg)
        return commands.sign_command(cmd, key)

    def relay(
        self,
        inner: command_pb2.SignedEnvelope,
        *,
        key: keys.SigningKey | None = None,
        audience: str = SPOKE,
    ) -> command_pb2.SignedEnvelope:
        key = key or self.peers.hub
        now = commands.now()
        relay = command_pb2.Relay(
            issuer=key.name,
            audience=audience,
            issue_time=commands.to_timestamp(now),
            expire_time=commands.to_timestamp(now + dt.timedelta(seconds=60)),
            nonce=b"r" * 8 + __import__("secrets").token_bytes(16),
            command=inner,
        )
        return envelope.sign(relay.SerializeToString(), envelope.PAYLOAD_TYPE_RELAY, key)

    async def spawn_env(self, env: command_pb2.SignedEnvelope) -> command_pb2.Reply:
        resp = await self.stub.SpawnAgent(
            spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env), timeout=10
        )
        return commands.parse_reply(resp.reply.payload)

    async def spawn(
        self, task: str = "duration=0.2", profile: str = "synthetic", **kw: Any
    ) -> command_pb2.Reply:
        body = command_pb2.SpawnAgentBody(
            profile=profile, task=task, **{k: v for k, v in kw.items() if k != "command_id"}
        )
        return await self.spawn_env(
            self.command("spawn_agent", body, command_id=kw.get("command_id"))
        )

    async def get(self, agent: str) -> command_pb2.Reply:
        env = self.command("get_agent", command_pb2.GetAgentBody(agent=agent))
        resp = await self.stub.GetAgent(
            spoke_service_pb2.SpokeServiceGetAgentRequest(command=env), timeout=10
        )
        return commands.parse_reply(resp.reply.payload)

    async def kill(self, agent: str) -> command_pb2.Reply:
        env = self.command("kill_agent", command_pb2.KillAgentBody(agent=agent))
        resp = await self.stub.KillAgent(
            spoke_service_pb2.SpokeServiceKillAgentRequest(command=env), timeout=15
        )
        return commands.parse_reply(resp.reply.payload)

    async def list(self, **kw: Any) -> command_pb2.Reply:
        env = self.command("list_agents", command_pb2.ListAgentsBody(**kw))
        resp = await self.stub.ListAgents(
            spoke_service_pb2.SpokeServiceListAgentsRequest(command=env), timeout=10
        )
        return commands.parse_reply(resp.reply.payload)

    async def wait_state(self, agent: str, *states: str, within: float = 15) -> Any:
        import asyncio

        from hubspoke.gen.federation.v1 import agent_pb2

        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            a = (await self.get(agent)).agent
            name = agent_pb2.Agent.State.Name(a.state).removeprefix("STATE_")
            if name in states:
                return a
            if loop.time() > deadline:
                raise AssertionError(f"agent {agent} is {name}, wanted {states}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def start_spoke(
    peers: Peers, redis_url: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[SpokeApp, SpokeClient]]]]:
    """Start extra spokes with config overrides; all are stopped at teardown."""
    started: list[tuple[SpokeApp, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> tuple[SpokeApp, SpokeClient]:
        overrides.setdefault("redis_url", redis_url)
        app = SpokeApp(spoke_config(peers, **overrides))
        await app.start()
        channel = open_channel(f"127.0.0.1:{app.port}")
        started.append((app, channel))
        return app, SpokeClient(channel, peers)

    yield start
    for app, channel in reversed(started):
        await channel.close()
        await app.shutdown()


@pytest.fixture
async def spoke_app(peers: Peers, redis_url: str) -> AsyncIterator[SpokeApp]:
    async with SpokeApp(spoke_config(peers, redis_url)) as app:
        yield app


@pytest.fixture
async def client(spoke_app: SpokeApp, peers: Peers) -> AsyncIterator[SpokeClient]:
    channel = open_channel(f"127.0.0.1:{spoke_app.port}")
    try:
        yield SpokeClient(channel, peers)
    finally:
        await channel.close()


@pytest.fixture
async def relayed(redis_url: str) -> AsyncIterator[tuple[aioredis.Redis, RoundTrips]]:
    """A client of the test Redis through a relay that counts round trips (tests/round_trips.py)."""
    async with count_round_trips(redis_url) as (url, seen):
        client = aioredis.Redis.from_url(url)
        await client.ping()
        try:
            yield client, seen
        finally:
            await client.aclose()
