"""docs/vectors/idempotency.json through a real hub and spoke, signed by hand as §9 describes.

The Node client runs the same file (``test_node_client.py``); both must reach every vector's
expected outcome. A further test derives a vector per SpawnAgentBody field from the proto
descriptor, so a field added later is part of a spawn's meaning unless §9 says otherwise.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from hubspoke import commands, keys
from hubspoke.gen.federation.v1 import command_pb2, hub_service_pb2, hub_service_pb2_grpc
from hubspoke.grpc import status as sstatus

from .conftest import SERVICE, SPOKE, Interop

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "idempotency.json"
DOC: dict[str, Any] = json.loads(VECTORS.read_text())

pytestmark = pytest.mark.timeout(120)


def spawn_body(fields: Mapping[str, Any]) -> command_pb2.SpawnAgentBody:
    """A vector's body: proto field names, durations as {seconds, nanos}."""
    body = command_pb2.SpawnAgentBody(profile=DOC["profile"])
    for name, value in fields.items():
        if name in {"timeout", "delay", "start_within"}:
            getattr(body, name).CopyFrom(duration_pb2.Duration(**value))
        elif name == "labels":
            body.labels.update(value)
        else:
            setattr(body, name, value)
    return body


class Sender:
    def __init__(self, stub: hub_service_pb2_grpc.HubServiceStub, key: keys.SigningKey) -> None:
        self.stub = stub
        self.key = key

    async def spawn(self, command_id: str, body: command_pb2.SpawnAgentBody) -> str:
        """SAME-style outcome of one signed spawn: the agent id on OK, else the reason."""
        cmd = commands.build_command(issuer=SERVICE, audience=SPOKE, command_id=command_id)
        cmd.spawn_agent.CopyFrom(body)
        request = hub_service_pb2.HubServiceSpawnAgentRequest(
            command=commands.sign_command(cmd, self.key)
        )
        try:
            response = await self.stub.SpawnAgent(request, timeout=20)
        except grpc.aio.AioRpcError as err:
            return sstatus.from_rpc_error(err).reason
        return commands.parse_reply(response.reply.payload).agent.agent_id


@pytest.fixture
async def sender(interop: Interop) -> AsyncIterator[Sender]:
    key = keys.load_private(interop.service_key, SERVICE)
    async with grpc.aio.insecure_channel(interop.hub_address) as channel:
        yield Sender(hub_service_pb2_grpc.HubServiceStub(channel), key)


async def outcome(sender: Sender, first: command_pb2.SpawnAgentBody, retry: Any) -> str:
    command_id = f"vec-{uuid.uuid4()}"
    assert await sender.spawn(command_id, first) == command_id
    answer = await sender.spawn(command_id, retry)
    return "SAME_AGENT" if answer == command_id else answer


@pytest.mark.parametrize("interop", [False], ids=["plaintext"], indirect=True)
@pytest.mark.parametrize("vector", DOC["vectors"], ids=lambda v: v["name"])
async def test_vector(sender: Sender, vector: dict[str, Any]) -> None:
    got = await outcome(sender, spawn_body(vector["first"]), spawn_body(vector["retry"]))
    assert got == vector["expect"]


# A changed value for each field, applied to a base body with every field set.
_BASE: dict[str, Any] = DOC["vectors"][1]["first"]
_CHANGED: dict[str, Any] = {
    "profile": None,  # the fixture's spoke has one profile; another name is UNKNOWN_PROFILE
    "task": "duration=0.3 steps=0",
    "priority": 8,
    "timeout": {"seconds": 29, "nanos": 0},
    "labels": {"team": "infra"},
    "max_attempts": 3,
    "delay": {"seconds": 0, "nanos": 6000000},
    "start_within": {"seconds": 3600, "nanos": 0},
    "dedupe_key": "vector-other-key",
    "dedupe_from_task": True,
}


# Fields §9 names as exceptions, tested elsewhere: a dry run stores nothing, so it never meets
# a stored meaning; a selector is refused with a spoke as audience, and its meaning through a
# hub is checked by tests/e2e/test_routing.py.
_ELSEWHERE = frozenset({"profile", "dry_run", "selector"})


@pytest.mark.parametrize("interop", [False], ids=["plaintext"], indirect=True)
@pytest.mark.parametrize(
    "field",
    [f.name for f in command_pb2.SpawnAgentBody.DESCRIPTOR.fields if f.name not in _ELSEWHERE],
)
async def test_every_spawn_field_is_part_of_the_meaning(sender: Sender, field: str) -> None:
    assert field in _CHANGED, f"SpawnAgentBody.{field} is new: add it to §9 and to this test"
    retry = spawn_body({**_BASE, field: _CHANGED[field]})
    assert await outcome(sender, spawn_body(_BASE), retry) == "COMMAND_ID_REUSED"
