"""The spoke's log lines of a call name its command, as the hub's do: command_id and issuer."""

from __future__ import annotations

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2

from .conftest import SpokeClient


def _rpc_lines(logs: list[dict[str, object]], rpc: str) -> list[dict[str, object]]:
    return [e for e in logs if e.get("event") == "rpc" and str(e.get("rpc", "")).endswith(rpc)]


async def test_direct_and_relayed_calls_log_their_command_id_and_issuer(
    client: SpokeClient,
) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await client.spawn(command_id="log-direct-1")
        body = command_pb2.SpawnAgentBody(profile="synthetic", task="duration=0.1")
        inner = client.command("spawn_agent", body, command_id="log-relayed-1")
        await client.spawn_env(client.relay(inner))
    lines = _rpc_lines(logs, "/SpawnAgent")
    assert [(e["command_id"], e["issuer"], e["code"]) for e in lines] == [
        ("log-direct-1", "operator", "OK"),
        ("log-relayed-1", "operator", "OK"),
    ]


async def test_a_rejected_command_still_names_itself(client: SpokeClient) -> None:
    env = client.command(
        "spawn_agent",
        command_pb2.SpawnAgentBody(profile="synthetic", task="duration=0.1"),
        audience="another-spoke",
        command_id="log-wrong-audience",
    )
    request = spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env)
    with (
        capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
        pytest.raises(grpc.aio.AioRpcError) as info,
    ):
        await client.stub.SpawnAgent(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (line,) = _rpc_lines(logs, "/SpawnAgent")
    assert (line["command_id"], line["issuer"], line["reason"]) == (
        "log-wrong-audience",
        "operator",
        "WRONG_SPOKE",
    )
