"""The id alphabet at the hub: an id with ``:`` is refused before anything is relayed or stored."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis.asyncio

from hubspoke import commands, keys
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import command_pb2, hub_service_pb2, hub_service_pb2_grpc

from .conftest import Federation

HUB = "hub"
REFS = ("w2:lock", "spokes/spoke-1/agents/w2:lock")


async def test_an_id_with_a_colon_is_refused_by_the_hub(
    federation: Federation, redis_url: str
) -> None:
    key = keys.load_private(federation.files.keys_dir / "operator.key", "operator")
    channel = sgrpc.open_channel(federation.hub_address)
    stub = hub_service_pb2_grpc.HubServiceStub(channel)

    def signed(audience: str, body: str, msg: Any, command_id: str | None = None) -> Any:
        cmd = commands.build_command(issuer="operator", audience=audience, command_id=command_id)
        getattr(cmd, body).CopyFrom(msg)
        return commands.sign_command(cmd, key)

    async def refused(call: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        return err.value

    async def watch(env: Any) -> None:
        request = hub_service_pb2.HubServiceWatchAgentRequest(command=env)
        async for _ in stub.WatchAgent(request, timeout=10):
            pass

    try:
        spawn = command_pb2.SpawnAgentBody(profile="synthetic", task="duration=0.1")
        env = signed("spoke-1", "spawn_agent", spawn, command_id="w2:lock")
        err = await refused(
            stub.SpawnAgent(hub_service_pb2.HubServiceSpawnAgentRequest(command=env), timeout=10)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "command_id must be 1-128 characters" in (err.details() or "")

        for audience in (HUB, "spoke-1"):
            for ref in REFS:
                get = signed(audience, "get_agent", command_pb2.GetAgentBody(agent=ref))
                kill = signed(audience, "kill_agent", command_pb2.KillAgentBody(agent=ref))
                replay = signed(audience, "replay_agent", command_pb2.ReplayAgentBody(agent=ref))
                watched = signed(audience, "watch_agent", command_pb2.WatchAgentBody(agent=ref))
                errs = [
                    await refused(
                        stub.GetAgent(
                            hub_service_pb2.HubServiceGetAgentRequest(command=get), timeout=10
                        )
                    ),
                    await refused(
                        stub.KillAgent(
                            hub_service_pb2.HubServiceKillAgentRequest(command=kill), timeout=10
                        )
                    ),
                    await refused(
                        stub.ReplayAgent(
                            hub_service_pb2.HubServiceReplayAgentRequest(command=replay),
                            timeout=10,
                        )
                    ),
                    await refused(watch(watched)),
                ]
                for err in errs:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (audience, ref)
                    # The hub's own answer, not a spoke's passed on.
                    assert "an agent id is 1-128 characters" in (err.details() or "")
    finally:
        await channel.close(None)

    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert [k async for k in r.scan_iter(match="*w2:lock*")] == []
        assert [k async for k in r.scan_iter(match="federation:spoke-1:agent:*")] == []
    finally:
        await r.aclose()
