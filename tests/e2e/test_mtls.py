"""mTLS end to end: a real hub and spoke that both require client certificates.

Every hop is TLS with certificates from one ``hubctl certs init`` CA: client → hub, and
hub → spoke (the hub presents its own certificate and checks the spoke's name). Peers without
a certificate, with one from another CA, or speaking plaintext never get past the handshake.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hubspoke import client as hc
from hubspoke import commands, keys, tls
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import agent_pb2, hub_service_pb2, hub_service_pb2_grpc
from hubspoke.hub.app import HubApp
from hubspoke.hub.config import HubConfig, SpokeEntry
from hubspoke.hub.federation_files import FederationFiles, write_federation
from hubspoke.spoke import app as spoke_app
from hubspoke.spoke import config as spoke_config
from hubspoke.trust import TrustStore

from .conftest import REPO, Federation, wait_final

Agent = agent_pb2.Agent
Kind = agent_pb2.AgentEvent.Kind
pytestmark = pytest.mark.slow

PLAINTEXT_REFUSED = "plaintext is allowed only on loopback; configure [tls]"


@dataclass
class MtlsFederation:
    fed: Federation
    spoke_address: str

    @property
    def files(self) -> FederationFiles:
        return self.fed.files

    @property
    def tls_dir(self) -> Path:
        assert self.files.tls_dir is not None
        return self.files.tls_dir

    def credentials(self, name: str = "operator") -> grpc.ChannelCredentials:
        d = self.tls_dir
        return tls.channel_credentials(
            tls.TlsConfig(d / f"{name}.crt", d / f"{name}.tls.key", d / "ca.crt")
        )


@pytest.fixture
async def mtls(tmp_path: Path, redis_url: str) -> AsyncIterator[MtlsFederation]:
    files = write_federation(
        tmp_path, [("spoke-1", "127.0.0.1:0", redis_url)], "127.0.0.1:0", redis_url, tls=True
    )
    scfg = spoke_config.SpokeConfig.load(files.spoke_configs["spoke-1"], {})
    assert scfg.tls is not None
    assert scfg.tls.require_client_cert
    async with spoke_app.SpokeApp(scfg) as spoke:
        spoke_address = f"127.0.0.1:{spoke.port}"
        hcfg = HubConfig.load(files.hub_config, {}).replace(
            spokes=(SpokeEntry("spoke-1", spoke_address),)  # dialled by IP, checked by name
        )
        assert hcfg.tls is not None
        async with HubApp(hcfg) as hub:
            yield MtlsFederation(Federation(files, f"127.0.0.1:{hub.port}"), spoke_address)


async def health(
    address: str, credentials: grpc.ChannelCredentials | None, server_name: str
) -> grpc.StatusCode:
    """The status of one grpc.health.v1 Check over a fresh channel."""
    channel = sgrpc.open_channel(address, None, credentials, server_name)
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close(None)
    return grpc.StatusCode.OK


async def test_spawn_through_the_hub_over_mtls(mtls: MtlsFederation) -> None:
    async with mtls.fed.client() as client:
        spokes = await client.spokes()  # the hub probed the spoke over mTLS
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.2 steps=2")
        final = await wait_final(client, agent.agent_id)
    assert [(s.name, s.health) for s in spokes] == [("spoke-1", hc.SpokeHealth.READY)]
    assert final.state == Agent.STATE_SUCCEEDED

    code, doc, err = await mtls.fed.hubctl(
        "spawn", "--spoke", "spoke-1", "--json", "--wait", "--", "duration=0.1"
    )
    assert code == 0, err
    assert doc["state"] == "SUCCEEDED"


async def test_a_client_with_the_federation_cert_gets_through(mtls: MtlsFederation) -> None:
    creds = mtls.credentials()
    assert await health(mtls.fed.hub_address, creds, "hub") == grpc.StatusCode.OK
    assert await health(mtls.spoke_address, creds, "spoke-1") == grpc.StatusCode.OK


async def test_a_client_without_a_cert_is_rejected(mtls: MtlsFederation) -> None:
    no_cert = grpc.ssl_channel_credentials((mtls.tls_dir / "ca.crt").read_bytes())
    assert await health(mtls.fed.hub_address, no_cert, "hub") == grpc.StatusCode.UNAVAILABLE
    assert await health(mtls.spoke_address, no_cert, "spoke-1") == grpc.StatusCode.UNAVAILABLE


async def test_a_client_cert_from_another_ca_is_rejected(
    mtls: MtlsFederation, tmp_path: Path
) -> None:
    other = tls.init_pki(tmp_path / "other-ca", [("operator", [])]).leaves["operator"]
    creds = tls.channel_credentials(
        tls.TlsConfig(other.cert_file, other.key_file, mtls.tls_dir / "ca.crt")
    )
    assert await health(mtls.fed.hub_address, creds, "hub") == grpc.StatusCode.UNAVAILABLE
    assert await health(mtls.spoke_address, creds, "spoke-1") == grpc.StatusCode.UNAVAILABLE

    files = mtls.files
    client = hc.Client(
        mtls.fed.hub_address,
        "operator",
        keys.load_private(files.keys_dir / "operator.key", "operator"),
        TrustStore.from_file(files.trust_file),
        timeout_s=5,
        credentials=creds,
    )
    async with client:
        with pytest.raises(hc.CallError) as info:
            await client.spokes()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_the_server_certificate_must_carry_the_dialled_name(mtls: MtlsFederation) -> None:
    creds = mtls.credentials()
    assert await health(mtls.fed.hub_address, creds, "spoke-1") == grpc.StatusCode.UNAVAILABLE
    assert await health(mtls.spoke_address, creds, "hub") == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_to_a_tls_port_fails(mtls: MtlsFederation) -> None:
    assert await health(mtls.fed.hub_address, None, "") == grpc.StatusCode.UNAVAILABLE
    assert await health(mtls.spoke_address, None, "") == grpc.StatusCode.UNAVAILABLE


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_without_tls_nothing_listens_on_or_dials_the_network(tmp_path: Path) -> None:
    files = write_federation(
        tmp_path,
        [("spoke-1", "127.0.0.1:0", "redis://127.0.0.1:1/0")],
        "127.0.0.1:0",
        "redis://127.0.0.1:1/0",
    )
    hub_conf, spoke_conf = str(files.hub_config), str(files.spoke_configs["spoke-1"])

    code, err = await _run("hub", "--config", hub_conf, "--listen", "0.0.0.0:0")
    assert code == 2
    assert err.strip() == f"Error: listen 0.0.0.0:0: {PLAINTEXT_REFUSED}"

    code, err = await _run("spoke", "--config", spoke_conf, "--listen", "0.0.0.0:0")
    assert code == 2
    assert err.strip().splitlines()[-1] == f"Error: listen 0.0.0.0:0: {PLAINTEXT_REFUSED}"

    code, err = await _run(
        "hub", "--config", hub_conf, env={"HUB_SPOKES": "spoke-1=192.0.2.1:7101"}
    )
    assert code == 2
    assert err.strip() == f"Error: spoke spoke-1 at 192.0.2.1:7101: {PLAINTEXT_REFUSED}"

    code, err = await _run(
        "hubspoke.hub.cli",
        "--config",
        str(files.hubctl_config),
        "--hub",
        "192.0.2.1:7100",
        "spokes",
    )
    assert code == 2
    assert err.strip() == f"Error: hub 192.0.2.1:7100: {PLAINTEXT_REFUSED}"


@pytest.mark.timeout(120)
async def test_a_long_watch_over_mtls_survives_keepalive(mtls: MtlsFederation) -> None:
    """One WatchAgent stream held 35 s through the hub: pings on both hops, no GOAWAY.

    The stream is called directly (no client-side resume), so a too_many_pings GOAWAY
    would surface as UNAVAILABLE instead of being retried away.
    """
    async with mtls.fed.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=35 steps=7")
    key = keys.load_private(mtls.files.keys_dir / "operator.key", "operator")
    cmd = commands.build_command(issuer="operator", audience="hub")
    cmd.watch_agent.agent = agent.agent_id
    channel = sgrpc.open_channel(mtls.fed.hub_address, None, mtls.credentials(), "hub")
    start = time.monotonic()
    events: list[agent_pb2.AgentEvent] = []
    try:
        call = hub_service_pb2_grpc.HubServiceStub(channel).WatchAgent(
            hub_service_pb2.HubServiceWatchAgentRequest(command=commands.sign_command(cmd, key)),
            timeout=100,
        )
        async for response in call:
            events.append(commands.parse_reply(response.reply.payload).agent_event)
    finally:
        await channel.close(None)
    elapsed = time.monotonic() - start
    states = [e.state for e in events if e.kind == Kind.KIND_STATE]
    assert states[-1] == Agent.STATE_SUCCEEDED
    assert elapsed >= 34
    assert sum(e.kind == Kind.KIND_PROGRESS for e in events) == 7
    assert any(e.kind == Kind.KIND_HEARTBEAT for e in events)
