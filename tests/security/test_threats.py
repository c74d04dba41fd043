"""Rows of the threat model (docs/security.md §19) that no other test held: what a stolen CA
key, a stolen operator TLS certificate and a stolen spoke key *cannot* do.

A real hub and spoke with mutual TLS on every hop (``mtls_federation`` of
tests/e2e/test_mtls.py). The thief's material is made the way a thief would have it:

* the **CA key**: a copy of ``ca.crt``/``ca.key`` in a directory of the thief's, minting
  fresh certificates (fresh TLS keys) named ``operator`` and ``hub``;
* the **operator's certificate** without its TLS key, or with its TLS key but without the
  operator's Ed25519 signing key;
* the **spoke's signing key**, sent over the spoke's own certificate (so the transport
  binding passes and only the role check is left).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hubspoke import commands, keys, tls
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import (
    command_pb2,
    hub_service_pb2,
    hub_service_pb2_grpc,
    spoke_service_pb2,
    spoke_service_pb2_grpc,
)

from ..e2e.test_mtls import MtlsFederation, health, mtls_federation
from ..e2e.test_transport_binding import _relay

pytestmark = pytest.mark.slow

OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def mtls(tmp_path: Path, redis_url: str) -> AsyncIterator[MtlsFederation]:
    async with mtls_federation(tmp_path / "fed", redis_url) as federation:
        yield federation


def _creds(tls_dir: Path, name: str) -> grpc.ChannelCredentials:
    """``name``'s certificate and TLS key from ``tls_dir``."""
    return tls.channel_credentials(
        tls.TlsConfig(tls_dir / f"{name}.crt", tls_dir / f"{name}.tls.key", tls_dir / "ca.crt")
    )


def _thief_pki(mtls: MtlsFederation, where: Path, names: list[str]) -> Path:
    """The CA key in the thief's hands: copied out, and used to mint ``names``."""
    where.mkdir()
    for f in ("ca.crt", "ca.key"):
        shutil.copy2(mtls.tls_dir / f, where / f)
    tls.init_pki(where, [(n, []) for n in names])
    return where


def _key(mtls: MtlsFederation, name: str) -> keys.SigningKey:
    return keys.load_private(mtls.files.keys_dir / f"{name}.key", name)


def _spawn(key: keys.SigningKey, issuer: str, audience: str = "spoke-1") -> tuple[str, bytes]:
    """A signed spawn of ``synthetic`` (its command id is the agent's id) and its bytes."""
    cmd = commands.build_command(issuer=issuer, audience=audience)
    cmd.spawn_agent.profile = "synthetic"
    cmd.spawn_agent.task = "duration=0"
    return cmd.command_id, commands.sign_command(cmd, key).SerializeToString()


def _get(key: keys.SigningKey, agent_id: str) -> command_pb2.SignedEnvelope:
    cmd = commands.build_command(issuer=key.name, audience="spoke-1")
    cmd.get_agent.agent = agent_id
    return commands.sign_command(cmd, key)


async def _to_hub(
    mtls: MtlsFederation, creds: grpc.ChannelCredentials, env: bytes
) -> sgrpc.CallFailure:
    channel = sgrpc.open_channel(mtls.fed.hub_address, None, creds, "hub")
    try:
        await hub_service_pb2_grpc.HubServiceStub(channel).SpawnAgent(
            hub_service_pb2.HubServiceSpawnAgentRequest(
                command=command_pb2.SignedEnvelope.FromString(env)
            ),
            timeout=10,
        )
    except grpc.aio.AioRpcError as exc:
        return sgrpc.from_rpc_error(exc)
    finally:
        await channel.close(None)
    return sgrpc.CallFailure(OK, "", "", {})


async def _to_spoke(
    mtls: MtlsFederation, creds: grpc.ChannelCredentials, env: command_pb2.SignedEnvelope
) -> sgrpc.CallFailure:
    channel = sgrpc.open_channel(mtls.spoke_address, None, creds, "spoke-1")
    try:
        await spoke_service_pb2_grpc.SpokeServiceStub(channel).SpawnAgent(
            spoke_service_pb2.SpokeServiceSpawnAgentRequest(command=env), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return sgrpc.from_rpc_error(exc)
    finally:
        await channel.close(None)
    return sgrpc.CallFailure(OK, "", "", {})


async def _stored(mtls: MtlsFederation, agent_id: str) -> grpc.StatusCode:
    """GetAgent by the real operator, over its own certificate: OK if the agent exists."""
    channel = sgrpc.open_channel(
        mtls.spoke_address, None, _creds(mtls.tls_dir, "operator"), "spoke-1"
    )
    try:
        await spoke_service_pb2_grpc.SpokeServiceStub(channel).GetAgent(
            spoke_service_pb2.SpokeServiceGetAgentRequest(
                command=_get(_key(mtls, "operator"), agent_id)
            ),
            timeout=10,
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close(None)
    return OK


async def test_a_stolen_ca_key_gets_through_tls_but_signs_no_command(
    mtls: MtlsFederation, tmp_path: Path
) -> None:
    """Certificates minted with the CA key pass the handshake and the identity binding (the
    real operator's command over the minted ``operator`` certificate is accepted), but a
    command signed by any key the trust store does not list, as ``operator``, to the hub or
    straight to the spoke, and a relay signed by a key posing as ``hub`` over a minted hub
    certificate, are UNAUTHENTICATED SIGNATURE_INVALID, and nothing is stored."""
    thief = _thief_pki(mtls, tmp_path / "thief", ["operator", "hub"])
    as_operator, as_hub = _creds(thief, "operator"), _creds(thief, "hub")
    assert await health(mtls.fed.hub_address, as_operator, "hub") == OK

    real = _key(mtls, "operator")
    agent, env = _spawn(real, "operator")
    assert (await _to_hub(mtls, as_operator, env)).code == OK  # TLS and binding: passed
    assert await _stored(mtls, agent) == OK

    fake_operator, fake_hub = keys.generate("operator"), keys.generate("hub")
    refused = []
    agent, env = _spawn(fake_operator, "operator")
    refused.append((agent, await _to_hub(mtls, as_operator, env)))
    agent, env = _spawn(fake_operator, "operator")
    refused.append(
        (agent, await _to_spoke(mtls, as_operator, command_pb2.SignedEnvelope.FromString(env)))
    )
    agent, env = _spawn(fake_operator, "operator")
    relay = _relay(command_pb2.SignedEnvelope.FromString(env), fake_hub)
    refused.append((agent, await _to_spoke(mtls, as_hub, relay)))
    # The thief's hub relay around the *real* operator's fresh command: the relay's
    # signature is what fails.
    agent, env = _spawn(real, "operator")
    relay = _relay(command_pb2.SignedEnvelope.FromString(env), fake_hub)
    refused.append((agent, await _to_spoke(mtls, as_hub, relay)))
    for agent, failure in refused:
        assert (failure.code, failure.reason) == (UNAUTH, "SIGNATURE_INVALID"), failure
        assert await _stored(mtls, agent) == grpc.StatusCode.NOT_FOUND


async def test_the_operator_certificate_without_its_tls_key_does_not_connect(
    mtls: MtlsFederation,
) -> None:
    """The operator's certificate presented with another private key (say, the spoke's):
    the TLS handshake fails at the hub and at the spoke; nothing is answered."""
    d = mtls.tls_dir
    wrong_key = grpc.ssl_channel_credentials(  # not tls.channel_credentials: it checks the pair
        root_certificates=(d / "ca.crt").read_bytes(),
        private_key=(d / "spoke-1.tls.key").read_bytes(),
        certificate_chain=(d / "operator.crt").read_bytes(),
    )
    assert await health(mtls.fed.hub_address, wrong_key, "hub") != OK
    assert await health(mtls.spoke_address, wrong_key, "spoke-1") != OK
    assert await health(mtls.fed.hub_address, _creds(mtls.tls_dir, "operator"), "hub") == OK


async def test_the_operator_certificate_without_the_signing_key_issues_no_command(
    mtls: MtlsFederation,
) -> None:
    """With the operator's certificate and TLS key but not its Ed25519 key: a command signed
    by another key as ``operator`` is refused, and a captured command of the operator's sent
    again is NONCE_REUSED, at the hub and at the spoke."""
    creds = _creds(mtls.tls_dir, "operator")
    agent, env = _spawn(keys.generate("operator"), "operator")
    failure = await _to_hub(mtls, creds, env)
    assert (failure.code, failure.reason) == (UNAUTH, "SIGNATURE_INVALID")
    assert await _stored(mtls, agent) == grpc.StatusCode.NOT_FOUND

    agent, captured = _spawn(_key(mtls, "operator"), "operator")
    assert (await _to_hub(mtls, creds, captured)).code == OK
    again_hub = await _to_hub(mtls, creds, captured)
    again_spoke = await _to_spoke(mtls, creds, command_pb2.SignedEnvelope.FromString(captured))
    for failure in (again_hub, again_spoke):
        assert (failure.code, failure.reason) == (UNAUTH, "NONCE_REUSED"), failure


async def test_a_stolen_spoke_key_commands_nothing(mtls: MtlsFederation) -> None:
    """The spoke's own key, over the spoke's own certificate (the binding passes): a spawn it
    signs as itself, to the spoke or through the hub, and a relay it signs, are
    UNAUTHENTICATED, and nothing is stored."""
    spoke_key = _key(mtls, "spoke-1")
    as_spoke = _creds(mtls.tls_dir, "spoke-1")
    attempts = []
    agent, env = _spawn(spoke_key, "spoke-1")
    attempts.append(
        (agent, await _to_spoke(mtls, as_spoke, command_pb2.SignedEnvelope.FromString(env)))
    )
    agent, env = _spawn(spoke_key, "spoke-1")
    attempts.append((agent, await _to_hub(mtls, as_spoke, env)))
    agent, env = _spawn(_key(mtls, "operator"), "operator")
    relay = _relay(command_pb2.SignedEnvelope.FromString(env), spoke_key)
    attempts.append((agent, await _to_spoke(mtls, as_spoke, relay)))
    for agent, failure in attempts:
        assert failure.code == UNAUTH, failure
        assert await _stored(mtls, agent) == grpc.StatusCode.NOT_FOUND
