"""``hubctl dev up --tls`` (issue 14): mutual TLS throughout, and every server refuses
plaintext. A real ``hubctl dev up`` subprocess, driven through the hubctl CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import tls

HUBCTL = str(Path(sys.executable).parent / "hubctl")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
async def dev_tls(tmp_path: Path) -> AsyncIterator[Path]:
    """``hubctl dev up --tls --spokes 2`` until it said ``ready``; its DIR."""
    root = tmp_path / "dev"
    stderr_path = tmp_path / "dev-up.stderr"
    with stderr_path.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            HUBCTL, "dev", "up", "--tls", "--dir", str(root), "--spokes", "2",
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            while (line := await process.stdout.readline()) != b"ready\n":
                assert line, f"dev up exited {await process.wait()}:\n{stderr_path.read_text()}"
        yield root
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0, stderr_path.read_text()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)  # it stops every server it started
            async with asyncio.timeout(30):
                await process.wait()


async def _hubctl(root: Path, *args: str) -> Any:
    env = {**os.environ, "HUBCTL_CONFIG": str(root / "hubctl.toml")}
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        HUBCTL, "--json", *args, env=env, stdout=pipe, stderr=pipe
    )
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def _health(
    address: str, credentials: grpc.ChannelCredentials | None = None, name: str = ""
) -> grpc.StatusCode:
    """One grpc.health.v1 Check: plaintext without credentials, else TLS to the peer
    whose certificate carries ``name``."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        options = [("grpc.ssl_target_name_override", name)]
        channel = grpc.aio.secure_channel(address, credentials, options)
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close(None)
    return grpc.StatusCode.OK


async def test_dev_up_tls_is_mutual_tls_and_refuses_plaintext(dev_tls: Path) -> None:
    root = dev_tls
    hubctl_config = tomllib.loads((root / "hubctl.toml").read_text())
    assert hubctl_config["tls"] == {
        "cert_file": "tls/operator.crt",
        "key_file": "tls/operator.tls.key",
        "ca_file": "tls/ca.crt",
    }
    servers = {"hub": tomllib.loads((root / "hub.toml").read_text())}
    for name in ("spoke-1", "spoke-2"):
        servers[name] = tomllib.loads((root / f"{name}.toml").read_text())
    for name, config in servers.items():
        assert config["tls"]["cert_file"] == f"tls/{name}.crt", name

    spokes = (await _hubctl(root, "spokes"))["spokes"]
    assert sorted((s["name"], s["health"]) for s in spokes) == [
        ("spoke-1", "READY"),
        ("spoke-2", "READY"),
    ]
    agent = await _hubctl(root, "spawn", "--spoke", "spoke-1", "--wait", "--", "duration=0.1")
    assert agent["state"] == "SUCCEEDED"

    operator = tls.channel_credentials(
        tls.TlsConfig(root / "tls/operator.crt", root / "tls/operator.tls.key", root / "tls/ca.crt")
    )
    for name, config in servers.items():
        address = config["listen"]
        assert await _health(address) == grpc.StatusCode.UNAVAILABLE, name
        assert await _health(address, operator, name) == grpc.StatusCode.OK, name
