"""Every unverified command is rejected with its documented status, and nothing is queued."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
import redis.asyncio

from hubspoke import commands, envelope
from hubspoke.gen.federation.v1 import command_pb2, spoke_service_pb2
from hubspoke.spoke.app import SpokeApp

from .conftest import SPOKE, Peers, SpokeClient

SPAWN = command_pb2.SpawnAgentBody(profile="synthetic", task="duration=0.05")


async def _agents(r: redis.asyncio.Redis) -> int:
    return len(await r.keys(f"federation:{SPOKE}:agent:*"))


async def _rejected(client: SpokeClient, env: command_pb2.SignedEnvelope) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.spawn_env(env)
    return err.value.code()


async def test_forged_signature(client: SpokeClient, redis_client: redis.asyncio.Redis) -> None:
    env = client.command("spawn_agent", SPAWN)
    sig = bytearray(env.signatures[0].sig)
    sig[0] ^= 1
    env.signatures[0].sig = bytes(sig)
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_tampered_payload(client: SpokeClient, redis_client: redis.asyncio.Redis) -> None:
    env = client.command("spawn_agent", SPAWN)
    env.payload = env.payload.replace(b"duration=0.05", b"duration=9.99")
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_unknown_key(client: SpokeClient, peers: Peers, redis_client) -> None:
    env = client.command("spawn_agent", SPAWN, key=peers.intruder)
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_issuer_must_match_signing_key(
    client: SpokeClient, peers: Peers, redis_client
) -> None:
    cmd = commands.build_command(issuer="operator", audience=SPOKE)
    cmd.spawn_agent.CopyFrom(SPAWN)
    # Signed by the trusted hub key but claiming to be the operator, sent as a client command.
    env = commands.sign_command(cmd, peers.hub)
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_wrong_audience(client: SpokeClient, redis_client) -> None:
    env = client.command("spawn_agent", SPAWN, audience="spoke-2")
    assert await _rejected(client, env) == grpc.StatusCode.PERMISSION_DENIED
    assert await _agents(redis_client) == 0


async def test_expired(client: SpokeClient, redis_client) -> None:
    env = client.command("spawn_agent", SPAWN, at=commands.now() - dt.timedelta(minutes=10))
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_future_dated_beyond_skew(client: SpokeClient, redis_client) -> None:
    env = client.command("spawn_agent", SPAWN, at=commands.now() + dt.timedelta(minutes=2))
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_clock_skew_inside_window_is_accepted(client: SpokeClient) -> None:
    env = client.command("spawn_agent", SPAWN, at=commands.now() + dt.timedelta(seconds=10))
    reply = await client.spawn_env(env)
    assert reply.agent.agent_id


async def test_replayed_nonce(client: SpokeClient, redis_client) -> None:
    env = client.command("spawn_agent", SPAWN)
    await client.spawn_env(env)
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 1


async def test_replayed_relay(client: SpokeClient, redis_client) -> None:
    relay = client.relay(client.command("spawn_agent", SPAWN))
    await client.spawn_env(relay)
    assert await _rejected(client, relay) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 1


async def test_replay_rejected_after_spoke_restart(
    spoke_app: SpokeApp, client: SpokeClient, peers: Peers, redis_url: str, redis_client
) -> None:
    env = client.command("spawn_agent", SPAWN)
    await client.spawn_env(env)
    await spoke_app.shutdown()
    from hubspoke.grpc import open_channel

    from .conftest import spoke_config

    async with SpokeApp(spoke_config(peers, redis_url)) as again:
        channel = open_channel(f"127.0.0.1:{again.port}")
        try:
            assert await _rejected(SpokeClient(channel, peers), env) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        finally:
            await channel.close()
    assert await _agents(redis_client) == 1


async def test_client_key_cannot_relay(client: SpokeClient, peers: Peers, redis_client) -> None:
    relay = client.relay(client.command("spawn_agent", SPAWN), key=peers.operator)
    assert await _rejected(client, relay) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_hub_cannot_act_for_an_unknown_principal(
    client: SpokeClient, peers: Peers, redis_client
) -> None:
    """Chain of custody: a trusted hub relaying a command the spoke cannot verify."""
    inner = client.command("spawn_agent", SPAWN, key=peers.intruder)
    assert await _rejected(client, client.relay(inner)) == grpc.StatusCode.UNAUTHENTICATED
    hub_self = client.command("spawn_agent", SPAWN, key=peers.hub)  # hub key as a client
    assert await _rejected(client, client.relay(hub_self)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _agents(redis_client) == 0


async def test_body_must_fit_the_rpc(client: SpokeClient, redis_client) -> None:
    env = client.command("get_agent", command_pb2.GetAgentBody(agent="x"))
    assert await _rejected(client, env) == grpc.StatusCode.INVALID_ARGUMENT


async def test_unsigned_and_unknown_type(client: SpokeClient, redis_client) -> None:
    env = client.command("spawn_agent", SPAWN)
    del env.signatures[:]
    assert await _rejected(client, env) == grpc.StatusCode.UNAUTHENTICATED
    env = client.command("spawn_agent", SPAWN)
    env.payload_type = "application/json"
    assert await _rejected(client, env) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _agents(redis_client) == 0


@pytest.mark.parametrize("body", [b"\xff\xff\xff garbage", b"", b"\x0a\x05abc"])
async def test_malformed_bytes_are_invalid_argument(
    client: SpokeClient, redis_client, body: bytes
) -> None:
    call = client.channel.unary_unary("/federation.v1.SpokeService/SpawnAgent")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(body, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in (err.value.details() or "")
    assert await _agents(redis_client) == 0


async def test_garbage_payload_that_is_signed_is_invalid_argument(
    client: SpokeClient, peers: Peers, redis_client
) -> None:
    env = envelope.sign(b"\xff\xfe not a command", envelope.PAYLOAD_TYPE_COMMAND, peers.operator)
    assert await _rejected(client, env) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _agents(redis_client) == 0


async def test_every_spoke_method_is_a_known_rpc(spoke_app: SpokeApp) -> None:
    names = {m.name for m in spoke_service_pb2.DESCRIPTOR.services_by_name["SpokeService"].methods}
    assert {m.rsplit("/", 1)[1] for m in spoke_app.methods} == names


async def test_relayed_spawn_must_name_this_spoke_not_the_hub(
    client: SpokeClient, redis_client
) -> None:
    """A client lets a hub route reads and kills; never lets it choose where work runs."""
    inner = client.command("spawn_agent", SPAWN, audience="hub")
    assert await _rejected(client, client.relay(inner)) == grpc.StatusCode.PERMISSION_DENIED
    assert await _agents(redis_client) == 0


async def test_signed_envelopes_are_kept_with_the_agent_for_audit(
    client: SpokeClient, redis_client
) -> None:
    inner = client.command("spawn_agent", SPAWN)
    relay = client.relay(inner)
    reply = await client.spawn_env(relay)
    # Stored once, beside the record: "<length of the envelope>:<envelope><relay>" (keys.py).
    stored = await redis_client.get(f"federation:{SPOKE}:signed:{reply.agent.agent_id}")
    length, _, both = stored.partition(b":")
    stored_pair = [both[: int(length)], both[int(length) :]]
    assert stored_pair == [inner.SerializeToString(), relay.SerializeToString()]
