"""Floors: what any design pays. A unary gRPC echo of a signed spawn's size (direct, and
through a relay process), one Redis round trip, Ed25519 sign and verify, a bare asyncio
subprocess spawn up to its readiness byte (a tiny program and the Python agent), and the
design floor of a signed spawn (``floor_signed``: :mod:`benchlib.floor_signed`)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from hubspoke import envelope
from hubspoke.grpc import open_channel

from . import echo, floor_signed
from .clients import READY_CODE
from .context import SPAWN_SPOKE, Env, new_id
from .harness import Arm

_BASE_ENV = ("PATH", "HOME", "LANG")


def _echo_arm(env: Env, name: str, daemon_names: list[str], description: str) -> Arm:
    daemon = env.cluster.echo if name == "echo_direct" else env.cluster.relay
    assert daemon is not None
    payload = secrets.token_bytes(env.request_size)
    state: dict[str, Any] = {"bad": 0}

    async def begin() -> None:
        if "channel" not in state:
            channel = open_channel(f"127.0.0.1:{daemon.port}")
            env.stack.push_async_callback(channel.close, None)
            state["call"] = channel.unary_unary(
                echo.METHOD, request_serializer=None, response_deserializer=None
            )
            state["channel"] = channel
        state["bad"] = 0

    async def op(i: int) -> float:
        t0 = time.perf_counter()
        answer = await state["call"](payload, timeout=10)
        elapsed = time.perf_counter() - t0
        if answer != payload:
            state["bad"] += 1
        return elapsed

    async def check() -> dict[str, int]:
        return {"lost": state["bad"]}

    return Arm(
        name,
        "floor",
        description,
        op,
        lat_n=env.sizes.rpc_lat,
        tput_n=env.sizes.rpc_tput,
        # echo_relay: "server" is the relay and the echo server behind it (what the relayed
        # echo costs), "relay" the forwarding process alone (issue13's hub row shows both).
        roles={"server": daemon_names, **({"relay": ["relay"]} if "relay" in daemon_names else {})},
        begin=begin,
        check=check,
    )


def _redis_arm(env: Env) -> Arm:
    url = env.cluster.sites[SPAWN_SPOKE].redis.url
    client = aioredis.Redis.from_url(url)
    env.stack.push_async_callback(client.aclose)

    async def op(i: int) -> float:
        t0 = time.perf_counter()
        await client.ping()
        return time.perf_counter() - t0

    redis_name = f"redis:{SPAWN_SPOKE}"
    return Arm(
        "redis_rtt",
        "floor",
        "redis-py asyncio PING to the spoke's Redis (one round trip)",
        op,
        lat_n=env.sizes.rpc_lat,
        tput_n=env.sizes.rpc_tput,
        roles={"redis": [redis_name]},
        redis=[redis_name],
    )


def _floor_signed_arm(env: Env) -> Arm:
    """Sign, one gRPC call to the floor server (verify, one EVALSHA, sign), verify."""
    daemon = env.cluster.floor_signed
    assert daemon is not None
    state: dict[str, Any] = {}

    async def begin() -> None:
        if "client" not in state:
            channel = open_channel(f"127.0.0.1:{daemon.port}")
            env.stack.push_async_callback(channel.close, None)
            state["client"] = floor_signed.open_client(
                channel, env.cluster.operator, SPAWN_SPOKE, env.cluster.trust
            )

    async def op(i: int) -> float:
        t0 = time.perf_counter()
        await state["client"].spawn()
        return time.perf_counter() - t0

    redis_name = f"redis:{SPAWN_SPOKE}"
    return Arm(
        "floor_signed",
        "floor",
        "design floor: sign, grpc.aio call, verify + one EVALSHA + sign, verify the reply",
        op,
        lat_n=env.sizes.rpc_lat,
        tput_n=env.sizes.rpc_tput,
        roles={"server": ["floor_signed"], "redis": [redis_name]},
        redis=[redis_name],
        begin=begin,
    )


def _crypto_arms(env: Env) -> list[Arm]:
    assert env.spoke is not None
    assert env.cluster.operator is not None
    key = env.cluster.operator
    request: Any = env.spoke.spawn_request("ready", env.task)
    message = envelope.pae(envelope.PAYLOAD_TYPE_COMMAND, request.command.payload)
    signature = key.private.sign(message)
    public = key.private.public_key()

    async def sign(i: int) -> float:
        t0 = time.perf_counter()
        key.private.sign(message)
        return time.perf_counter() - t0

    async def verify(i: int) -> float:
        t0 = time.perf_counter()
        public.verify(signature, message)
        return time.perf_counter() - t0

    n = env.sizes.cpu_lat
    return [
        Arm("ed25519_sign", "floor", "Ed25519 sign of a spawn command's PAE bytes", sign, n),
        Arm("ed25519_verify", "floor", "Ed25519 verify of the same", verify, n),
    ]


def _child_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _BASE_ENV if k in os.environ}


def _spawn_arms(env: Env) -> list[Arm]:
    printf = shutil.which("printf") or "/usr/bin/printf"

    async def tiny(i: int) -> float:
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            printf,
            "r",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=_child_env(),
            start_new_session=True,
        )
        assert proc.stdout is not None
        first = await proc.stdout.read(1)
        elapsed = time.perf_counter() - t0
        await proc.wait()
        if first != b"r":
            raise RuntimeError("tiny agent sent no readiness byte")
        return elapsed

    async def python(i: int) -> float:
        tag = new_id()
        ready = env.ready.expect(tag)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            READY_CODE,
            tag,
            str(env.ready.path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=_child_env(),
            start_new_session=True,
        )
        t1 = await asyncio.wait_for(ready, 30)
        await proc.wait()
        return t1 - t0

    n = env.sizes.run_lat
    return [
        Arm(
            "spawn_tiny", "floor", "asyncio subprocess of printf to its first stdout byte", tiny, n
        ),
        Arm(
            "spawn_python",
            "floor",
            "asyncio subprocess of the bench's Python agent to its ready datagram",
            python,
            n,
        ),
    ]


def floor_arms(env: Env) -> list[Arm]:
    return [
        _echo_arm(env, "echo_direct", ["echo"], "grpc.aio unary echo, request-sized bytes"),
        _echo_arm(
            env, "echo_relay", ["echo", "relay"], "the same echo through a forwarding process"
        ),
        _redis_arm(env),
        _floor_signed_arm(env),
        *_crypto_arms(env),
        *_spawn_arms(env),
    ]
