"""Over mutual TLS the certificate is bound to the signer (docs/security.md §13.3, issue 9).

A real hub and spoke with mTLS on every hop (``mtls_federation`` of test_mtls.py), and one
more certificate from the federation's CA, for ``bob``. A command signed by the operator but
sent over bob's connection, to the hub or straight to the spoke, and a relay signed with the
hub's key but sent over a client's connection, are UNAUTHENTICATED
``TRANSPORT_IDENTITY_MISMATCH``; the operator over its own certificate still gets through.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hubspoke import commands, envelope, keys, tls
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import (
    command_pb2,
    hub_service_pb2,
    hub_service_pb2_grpc,
    spoke_service_pb2,
    spoke_service_pb2_grpc,
)

from .test_mtls import MtlsFederation, mtls_federation

pytestmark = pytest.mark.slow

MISMATCH = "TRANSPORT_IDENTITY_MISMATCH"


@pytest.fixture
async def mtls(tmp_path: Path, redis_url: str) -> AsyncIterator[MtlsFederation]:
    async with mtls_federation(tmp_path, redis_url) as federation:
        tls.init_pki(federation.tls_dir, [("bob", [])])  # same CA: a valid certificate
        yield federation


def _list_command(key: keys.SigningKey, audience: str) -> command_pb2.SignedEnvelope:
    cmd = commands.build_command(issuer=key.name, audience=audience)
    cmd.list_agents.page_size = 1
    return commands.sign_command(cmd, key)


def _relay(inner: command_pb2.SignedEnvelope, hub: keys.SigningKey) -> command_pb2.SignedEnvelope:
    now = commands.now()
    relay = command_pb2.Relay(
        issuer=hub.name,
        audience="spoke-1",
        issue_time=commands.to_timestamp(now),
        expire_time=commands.to_timestamp(now + dt.timedelta(seconds=60)),
        nonce=secrets.token_bytes(24),
        command=inner,
    )
    return envelope.sign(relay.SerializeToString(), envelope.PAYLOAD_TYPE_RELAY, hub)


async def _hub_list(mtls: MtlsFederation, cert: str, key: keys.SigningKey) -> sgrpc.CallFailure:
    channel = sgrpc.open_channel(mtls.fed.hub_address, None, mtls.credentials(cert), "hub")
    try:
        await hub_service_pb2_grpc.HubServiceStub(channel).ListAgents(
            hub_service_pb2.HubServiceListAgentsRequest(command=_list_command(key, "spoke-1")),
            timeout=10,
        )
    except grpc.aio.AioRpcError as exc:
        return sgrpc.from_rpc_error(exc)
    finally:
        await channel.close(None)
    return sgrpc.CallFailure(grpc.StatusCode.OK, "", "", {})


async def _spoke_list(
    mtls: MtlsFederation, cert: str, env: command_pb2.SignedEnvelope
) -> sgrpc.CallFailure:
    channel = sgrpc.open_channel(mtls.spoke_address, None, mtls.credentials(cert), "spoke-1")
    try:
        await spoke_service_pb2_grpc.SpokeServiceStub(channel).ListAgents(
            spoke_service_pb2.SpokeServiceListAgentsRequest(command=env), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return sgrpc.from_rpc_error(exc)
    finally:
        await channel.close(None)
    return sgrpc.CallFailure(grpc.StatusCode.OK, "", "", {})


def _key(mtls: MtlsFederation, name: str) -> keys.SigningKey:
    return keys.load_private(mtls.files.keys_dir / f"{name}.key", name)


async def test_a_command_over_another_peers_certificate_is_refused_by_the_hub(
    mtls: MtlsFederation,
) -> None:
    operator = _key(mtls, "operator")
    assert (await _hub_list(mtls, "operator", operator)).code == grpc.StatusCode.OK

    refused = await _hub_list(mtls, "bob", operator)
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.reason == MISMATCH
    assert "'operator'" in refused.message
    assert "bob" in refused.message


async def test_a_command_over_another_peers_certificate_is_refused_by_the_spoke(
    mtls: MtlsFederation,
) -> None:
    operator = _key(mtls, "operator")
    ok = await _spoke_list(mtls, "operator", _list_command(operator, "spoke-1"))
    assert ok.code == grpc.StatusCode.OK

    refused = await _spoke_list(mtls, "bob", _list_command(operator, "spoke-1"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, MISMATCH)


async def test_a_relay_must_come_over_the_hubs_own_certificate(mtls: MtlsFederation) -> None:
    """A hub key alone (say, stolen) is of no use from a host without the hub's certificate."""
    operator, hub = _key(mtls, "operator"), _key(mtls, "hub")
    ok = await _spoke_list(mtls, "hub", _relay(_list_command(operator, "hub"), hub))
    assert ok.code == grpc.StatusCode.OK

    for cert in ("operator", "bob"):
        refused = await _spoke_list(mtls, cert, _relay(_list_command(operator, "hub"), hub))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, MISMATCH)
        assert "relay" in refused.message


async def test_the_hub_relays_over_its_own_certificate(mtls: MtlsFederation) -> None:
    async with mtls.fed.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=0.1 steps=1")
        assert (await client.get(agent.agent_id)).agent_id == agent.agent_id
