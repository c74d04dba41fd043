"""mTLS end to end: a real hub and spoke that both require client certificates.

Every hop is TLS with certificates from one ``hubctl certs init`` CA: client → hub, and
hub → spoke (the hub presents its own certificate and checks the spoke's name). Peers without
a certificate, with one from another CA, or speaking plaintext never get past the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@contextlib.asynccontextmanager
async def mtls_federation(
    tmp_path: Path, redis_url: str, **spoke_changes: Any
) -> AsyncIterator[MtlsFederation]:
    """A hub and a spoke with mTLS on every hop; ``spoke_changes`` go into the spoke's config."""
    files = write_federation(
        tmp_path, [("spoke-1", "127.0.0.1:0", redis_url)], "127.0.0.1:0", redis_url, tls=True
    )
    scfg = spoke_config.SpokeConfig.load(files.spoke_configs["spoke-1"], {})
    if spoke_changes:
        scfg = scfg.replace(**spoke_changes)
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


@pytest.fixture
async def mtls(tmp_path: Path, redis_url: str) -> AsyncIterator[MtlsFederation]:
    async with mtls_federation(tmp_path, redis_url) as federation:
        yield federation


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


KEEPALIVE = sgrpc.ServerOptions()
"""The keepalive every server and channel of ours uses (hub and spoke build theirs alike)."""
PING_WINDOW_S = (KEEPALIVE.keepalive_time_ms + KEEPALIVE.keepalive_timeout_ms) / 1000
"""A keepalive ping's interval plus the wait for its ack: if a ping on either hop went
unanswered, or a client pinged too often (GOAWAY too_many_pings), a stream idle this long
would break."""
IDLE_S = PING_WINDOW_S + 2
"""How long the watched stream stays idle."""


@pytest.mark.timeout(IDLE_S + 90)
async def test_a_long_watch_over_mtls_survives_keepalive(tmp_path: Path, redis_url: str) -> None:
    """One WatchAgent stream through the hub stays open over an idle stretch longer than the
    keepalive interval (plus its timeout) on both hops, then carries the agent to its end.

    Idle means no message at all: the agent reports nothing while it runs, and the spoke's
    watch heartbeat comes only after IDLE_S of silence, so only HTTP/2 pings keep the two
    connections (client → hub, hub → spoke) alive meanwhile. Every wait is on an event: the
    heartbeat that ends the stretch, then the killed agent's final state. The stream is called
    directly (no client-side resume), so a GOAWAY would surface as UNAVAILABLE instead of
    being retried away.
    """
    async with mtls_federation(tmp_path, redis_url, watch_heartbeat_s=IDLE_S) as mtls:
        async with mtls.fed.client() as client:
            agent = await client.spawn("spoke-1", "synthetic", "duration=600 steps=0")
        key = keys.load_private(mtls.files.keys_dir / "operator.key", "operator")
        cmd = commands.build_command(issuer="operator", audience="hub")
        cmd.watch_agent.agent = agent.agent_id
        channel = sgrpc.open_channel(mtls.fed.hub_address, None, mtls.credentials(), "hub")
        events: list[agent_pb2.AgentEvent] = []
        try:
            call = hub_service_pb2_grpc.HubServiceStub(channel).WatchAgent(
                hub_service_pb2.HubServiceWatchAgentRequest(
                    command=commands.sign_command(cmd, key)
                ),
                timeout=IDLE_S + 60,
            )
            async for response in call:
                event = commands.parse_reply(response.reply.payload).agent_event
                events.append(event)
                if event.kind == Kind.KIND_HEARTBEAT:
                    # The idle stretch is over and the stream still delivers: end the agent.
                    async with mtls.fed.client() as client:
                        await client.kill(agent.agent_id)
        finally:
            await channel.close(None)

    kinds = [e.kind for e in events]
    running = next(
        i
        for i, e in enumerate(events)
        if e.kind == Kind.KIND_STATE and e.state == Agent.STATE_RUNNING
    )
    beat = kinds.index(Kind.KIND_HEARTBEAT)
    assert beat == running + 1, kinds  # nothing travelled between them: the stream was idle
    silence = events[beat].event_time.ToDatetime() - events[running].event_time.ToDatetime()
    assert silence.total_seconds() >= PING_WINDOW_S
    assert events[-1].kind == Kind.KIND_STATE
    assert events[-1].state == Agent.STATE_KILLED
