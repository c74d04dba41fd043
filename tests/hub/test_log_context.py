"""The hub's log lines of a call name its command (command_id, issuer), as the spoke's do,
from the moment the client's signature checks out: rejections after that carry them too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from hubspoke import commands, keys, policy
from hubspoke.gen.federation.v1 import command_pb2, hub_service_pb2, hub_service_pb2_grpc
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig


@pytest.fixture
async def hub(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[HubApp, keys.SigningKey]]:
    made = {name: keys.generate(name) for name in ("hub", "operator")}
    lines = []
    for name, role in (("hub", "hub"), ("operator", "client")):
        keys.write_keypair(made[name], tmp_path / "keys")
        public = keys.encode_public(made[name].public)
        lines += ["[[peer]]", f'name = "{name}"', f'role = "{role}"', f'keys = ["{public}"]', ""]
    (tmp_path / "trust.toml").write_text("\n".join(lines))
    (tmp_path / "policy.toml").write_text(policy.ALLOW_OPERATOR_EVERYTHING)
    config = HubConfig(
        listen="127.0.0.1:0",
        key_file=tmp_path / "keys" / "hub.key",
        trust_file=tmp_path / "trust.toml",
        policy_file=tmp_path / "policy.toml",
        redis_url=redis_url,
    )
    async with HubApp(config) as app:
        yield app, made["operator"]


async def test_accepted_and_replayed_calls_log_their_command_id_and_issuer(
    hub: tuple[HubApp, keys.SigningKey],
) -> None:
    app, operator = hub
    cmd = commands.build_command(issuer="operator", audience="hub", command_id="hub-log-1")
    cmd.list_spokes.CopyFrom(command_pb2.ListSpokesBody())
    request = hub_service_pb2.HubServiceListSpokesRequest(
        command=commands.sign_command(cmd, operator)
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = hub_service_pb2_grpc.HubServiceStub(channel)
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            await stub.ListSpokes(request, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):  # the same envelope again: a replay
                await stub.ListSpokes(request, timeout=10)
    lines = [e for e in logs if e.get("event") == "rpc"]
    assert [(e["command_id"], e["issuer"], e["code"], e["reason"]) for e in lines] == [
        ("hub-log-1", "operator", "OK", None),
        ("hub-log-1", "operator", "UNAUTHENTICATED", "NONCE_REUSED"),
    ]
