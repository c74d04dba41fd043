"""The bench's design floor of a signed spawn (scripts/benchlib/floor_signed.py) against a
real Redis and its real server process: a signed spawn is verified, stored by one script and
answered with a reply its client verifies; a replayed or badly signed request is refused, and
a reply that does not answer the command sent is caught. Also its note in the report."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from hubspoke import keys, testing
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.grpc import open_channel
from hubspoke.trust import Role, TrustedKey, TrustStore

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchlib import floor_notes, floor_signed  # noqa: E402 - after the path set-up above


def _trust(*pairs: tuple[keys.SigningKey, Role]) -> TrustStore:
    return TrustStore(
        TrustedKey(k.name, role, k.public, keys.fingerprint(k.public)) for k, role in pairs
    )


@pytest.fixture
async def floor(
    tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[floor_signed.Client, dict[str, Any]]]:
    operator, spoke = keys.generate("operator"), keys.generate("spoke-01")
    keys.write_keypair(spoke, tmp_path / "keys")
    trust = _trust((operator, Role.CLIENT), (spoke, Role.SPOKE))
    trust_file = tmp_path / "trust.toml"
    trust_file.write_text(
        "".join(
            f'[[peer]]\nname = "{k.name}"\nrole = "{r}"\n'
            f'keys = ["{keys.encode_public(k.public)}"]\n'
            for k, r in ((operator, "client"), (spoke, "spoke"))
        )
    )
    env = testing.server_env(
        {
            "PYTHONPATH": str(REPO / "scripts"),
            "FLOOR_NAME": "spoke-01",
            "FLOOR_KEY_FILE": str(tmp_path / "keys" / "spoke-01.key"),
            "FLOOR_TRUST_FILE": str(trust_file),
            "FLOOR_REDIS_URL": redis_url,
        }
    )
    argv = [sys.executable, "-m", "benchlib.floor_signed"]
    daemon = testing.Daemon("floor_signed", argv, tmp_path / "floor.log", env=env)
    await daemon.start()
    channel = open_channel(f"127.0.0.1:{daemon.port}")
    try:
        client = floor_signed.open_client(channel, operator, "spoke-01", trust)
        yield client, {"operator": operator, "spoke": spoke, "trust": trust}
    finally:
        await channel.close(None)
        await daemon.stop()


async def test_a_signed_spawn_is_stored_once_and_its_reply_verifies(
    floor: tuple[floor_signed.Client, dict[str, Any]], redis_client: aioredis.Redis
) -> None:
    client, _ = floor
    command_id, payload, request = client.request()
    answer = await client.call(request, timeout=10)
    client.check(command_id, payload, answer)
    assert await redis_client.get(f"floor:cmd:{command_id}") == payload
    cmd = command_pb2.Command.FromString(payload)
    assert await redis_client.exists(f"floor:nonce:{cmd.nonce.hex()}")
    assert 0 < await redis_client.pttl(f"floor:cmd:{command_id}") <= floor_signed.TTL_MS
    for _ in range(5):
        await client.spawn()

    with pytest.raises(grpc.aio.AioRpcError) as replayed:
        await client.call(request, timeout=10)
    assert replayed.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # A reply to another command is not this command's answer.
    with pytest.raises(floor_signed.FloorError, match="does not answer"):
        client.check("another-id", payload, answer)
    # Nor is one whose payload was altered after signing.
    env = command_pb2.SignedEnvelope.FromString(answer)
    env.payload += b"\x00"
    with pytest.raises(floor_signed.FloorError, match="signature"):
        client.check(command_id, payload, env.SerializeToString())


async def test_a_command_signed_by_an_unknown_key_is_refused(
    floor: tuple[floor_signed.Client, dict[str, Any]],
) -> None:
    client, _ = floor
    stranger = floor_signed.Client(keys.generate("operator"), "spoke-01", client.spoke, client.call)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stranger.spawn()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_report_notes_the_floor_with_every_role_and_its_ratio_to_echo() -> None:
    def arm(p50: float, tput: float, **cpu: float) -> dict[str, Any]:
        return {
            "p50": {"median": p50},
            "tput": {"median": tput},
            "cpu_us_per_op": {k: {"median": v} for k, v in cpu.items()},
        }

    doc = {
        "arms": {
            "echo_direct": arm(0.4, 5000, client=110, server=180),
            "floor_signed": arm(0.8, 3000, client=260, server=350, redis=35),
            "spawn_direct": arm(2.0, 600, client=400, spoke=900, redis=200),
        },
        "ratios": [
            {"name": "floor_signed p50 / echo p50", "median": 2.0},
            {"name": "floor_signed throughput / echo throughput", "median": 0.6},
            {"name": "spawn_direct p50 / floor_signed p50", "median": 2.5},
        ],
    }
    text = "\n".join(floor_notes.render(doc))
    for part in ("0.800 ms p50, 2.00x the echo", "0.60x its throughput", "client 260 µs"):
        assert part in text
    assert "server 350 µs, Redis 35 µs" in text
    assert "`spawn_direct` is 2.50x this floor's p50" in text
    assert "below ~2.00x the echo p50" in text
    assert "above ~0.60x its throughput" in text
    assert "spoked spends 900 µs of CPU per spawn where the floor's server spends 350 µs" in text
    assert floor_notes.render({"arms": {"echo_direct": doc["arms"]["echo_direct"]}}) == []
