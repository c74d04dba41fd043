"""The bench's direct spoke client (scripts/benchlib/clients.py ``DirectClient``) believes a
reply only after the client library's own checks (hubspoke.client's ``_reply_check``), as
``Client`` does: a reply signed by the right spoke that answers another command, names another
responder, or carries another agent is refused. And a call signs once and verifies once.

The peer is a real grpc.aio server playing the spoke: it signs each reply with the spoke's key,
altered as each case asks. The client is the thing under test.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from hubspoke import commands, envelope, keys
from hubspoke.client import Client
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, hub_service_pb2, spoke_service_pb2
from hubspoke.trust import Role, TrustedKey, TrustStore

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchlib.clients import DirectClient, ReplyError  # noqa: E402 - after the path set-up

SPOKE = "spoke-01"
Alter = Callable[[command_pb2.Reply], None]


class _Counting:
    """An Ed25519 key whose sign and verify calls are counted (everything else passes)."""

    def __init__(self, key: Any, counts: dict[str, int]) -> None:
        self._key, self._counts = key, counts

    def sign(self, data: bytes) -> bytes:
        self._counts["sign"] += 1
        return bytes(self._key.sign(data))

    def verify(self, sig: bytes, data: bytes) -> None:
        self._counts["verify"] += 1
        self._key.verify(sig, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._key, name)


class _Spoke:
    """Answers SpawnAgent and GetAgent with a signed reply, passed through ``alter`` first."""

    def __init__(self, key: keys.SigningKey) -> None:
        self.key = key
        self.alter: Alter = lambda reply: None

    def answer(self, request: bytes, kind: type[Any]) -> bytes:
        """The signed reply to ``request`` (a SpokeService or HubService spawn or get: the
        same fields), serialized as either response (the same fields too)."""
        env = kind.FromString(request).command
        cmd = commands.parse_command(env.payload)
        agent_id = cmd.command_id if cmd.HasField("spawn_agent") else cmd.get_agent.agent
        reply = command_pb2.Reply(
            command_id=cmd.command_id,
            responder=SPOKE,
            request_digest=commands.digest(env.payload),
            agent=agent_pb2.Agent(
                agent_id=agent_id,
                spoke=SPOKE,
                name=f"spokes/{SPOKE}/agents/{agent_id}",
                state=agent_pb2.Agent.STATE_QUEUED,
            ),
        )
        self.alter(reply)
        signed = envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, self.key)
        return bytes(
            spoke_service_pb2.SpokeServiceSpawnAgentResponse(reply=signed).SerializeToString()
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return self._service(
            "federation.v1.SpokeService",
            spoke_service_pb2.SpokeServiceSpawnAgentRequest,
            spoke_service_pb2.SpokeServiceGetAgentRequest,
        )

    def hub_handler(self) -> grpc.GenericRpcHandler:
        """The same answers as HubService (a hub relaying to this spoke, for ``Client``)."""
        return self._service(
            "federation.v1.HubService",
            hub_service_pb2.HubServiceSpawnAgentRequest,
            hub_service_pb2.HubServiceGetAgentRequest,
        )

    def _service(
        self, name: str, spawn_req: type[Any], get_req: type[Any]
    ) -> grpc.GenericRpcHandler:
        """SpawnAgent and GetAgent of service ``name``, answered from requests of these types."""

        async def spawn(request: bytes, context: Any) -> bytes:
            return self.answer(request, spawn_req)

        async def get(request: bytes, context: Any) -> bytes:
            return self.answer(request, get_req)

        methods = {
            "SpawnAgent": grpc.unary_unary_rpc_method_handler(spawn),
            "GetAgent": grpc.unary_unary_rpc_method_handler(get),
        }
        return grpc.method_handlers_generic_handler(name, methods)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[DirectClient, _Spoke, dict[str, int]]]:
    counts = {"sign": 0, "verify": 0}
    operator = keys.generate("operator")
    counted = keys.SigningKey("operator", _Counting(operator.private, counts))  # type: ignore[arg-type]  # a counting stand-in
    spoke_key, stranger = keys.generate(SPOKE), keys.generate("spoke-02")
    trust = TrustStore(
        [
            TrustedKey("operator", Role.CLIENT, operator.public, keys.fingerprint(operator.public)),
            TrustedKey(
                SPOKE,
                Role.SPOKE,
                _Counting(spoke_key.public, counts),  # type: ignore[arg-type]  # as above
                keys.fingerprint(spoke_key.public),
            ),
            TrustedKey("spoke-02", Role.SPOKE, stranger.public, keys.fingerprint(stranger.public)),
        ]
    )
    spoke = _Spoke(spoke_key)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([spoke.handler(), spoke.hub_handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with DirectClient(f"127.0.0.1:{port}", SPOKE, counted, trust) as client:
            yield client, spoke, counts
    finally:
        await server.stop(None)


async def test_the_library_client_too_signs_once_and_verifies_once(
    setup: tuple[DirectClient, _Spoke, dict[str, int]],
) -> None:
    """``hubspoke.client.Client`` (the hub arms' client) against the same peer as a hub."""
    direct, _, counts = setup
    async with Client(direct.address, "operator", direct._key, direct._trust, "hub", 10) as client:
        agent = await client.spawn(SPOKE, "ready", "t1", command_id="agent-1")
        assert (agent.agent_id, agent.spoke) == ("agent-1", SPOKE)
        assert counts == {"sign": 1, "verify": 1}
        assert (await client.get("agent-1", SPOKE)).agent_id == "agent-1"
        assert counts == {"sign": 2, "verify": 2}


async def test_a_spawn_and_a_status_sign_once_and_verify_once(
    setup: tuple[DirectClient, _Spoke, dict[str, int]],
) -> None:
    client, _, counts = setup
    agent = await client.spawn("ready", "t1", command_id="agent-1")
    assert (agent.agent_id, agent.spoke, agent.state.name) == ("agent-1", SPOKE, "QUEUED")
    assert counts == {"sign": 1, "verify": 1}
    assert (await client.get("agent-1")).agent_id == "agent-1"
    assert counts == {"sign": 2, "verify": 2}


def _other_command(reply: command_pb2.Reply) -> None:
    reply.command_id = "another-command"


def _other_responder(reply: command_pb2.Reply) -> None:
    reply.responder = "spoke-02"


def _other_agent(reply: command_pb2.Reply) -> None:
    reply.agent.agent_id = "someone-else"
    reply.agent.name = f"spokes/{SPOKE}/agents/someone-else"


def _other_spoke(reply: command_pb2.Reply) -> None:
    reply.agent.spoke = "spoke-02"


def _no_agent(reply: command_pb2.Reply) -> None:
    reply.ClearField("agent")
    reply.agent_page.SetInParent()


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (_other_command, "does not answer the command sent"),
        (_other_responder, "responder is not its signer"),
        (_other_agent, "asked for agent"),
        (_other_spoke, "answered for agent"),
        (_no_agent, "carries no agent"),
    ],
)
async def test_a_signed_reply_that_does_not_answer_is_refused(
    setup: tuple[DirectClient, _Spoke, dict[str, int]], alter: Alter, message: str
) -> None:
    client, spoke, _ = setup
    spoke.alter = alter
    with pytest.raises(ReplyError, match=message):
        await client.spawn("ready", "t1", command_id="agent-1")
    with pytest.raises(ReplyError, match=message):
        await client.get("agent-1")
