"""A real hub in front of a real spoke, trusting one extra client: a non-Python service.

The harness's in-process federation, as ``tests/e2e/conftest.py``'s ``federation``, plus a
client principal of its own, ``ts-service``, whose key the Node client signs with. Hub and
spoke share one trust store and one policy file, so both know the service and let it spawn
synthetic agents and read them. The fixture runs twice: plaintext on loopback, and mutual
TLS with the federation's CA (the service gets its own certificate from it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import keys, testing
from hubspoke import tls as stls
from hubspoke.hub.federation_files import FederationFiles

SERVICE = "ts-service"
"""The foreign client's principal name."""
SPOKE = "spoke-1"


@dataclass(frozen=True, slots=True)
class Interop:
    files: FederationFiles
    hub_address: str
    service_key: Path
    """The foreign client's PKCS#8 PEM private key (mode 0600)."""
    spoke_public: str
    """The spoke's public key text, ``ed25519:BASE64``: all the trust the client needs."""
    tls: stls.LeafFiles | None
    """The service's transport certificate and key, when the federation speaks TLS."""

    def client(self) -> hc.Client:
        """A Python client (the operator) to look at what the foreign client did."""
        return hc.client_from_config(self.files.hubctl_config, hub=self.hub_address, env={})


def _admit_service(files: FederationFiles) -> tuple[Path, stls.LeafFiles | None]:
    """What an operator does to let a new service in: trust its key, allow it, certify it."""
    service = keys.generate(SERVICE)
    service_key, _ = keys.write_keypair(service, files.keys_dir)
    with files.trust_file.open("a") as fh:
        fh.write(
            f'\n[[peer]]\nname = "{SERVICE}"\nrole = "client"\n'
            f'keys = ["{keys.encode_public(service.public)}"]\n'
        )
    with (files.root / "policy.toml").open("a") as fh:
        fh.write(
            f'\n[[rule]]\nname = "{SERVICE}-synthetic"\nprincipals = ["{SERVICE}"]\n'
            'verbs = ["spawn", "get", "list", "watch"]\nscope = "any"\nspokes = ["*"]\n'
            'profiles = ["synthetic"]\n'
        )
    leaf = None
    if files.tls_dir is not None:
        leaf = stls.init_pki(files.tls_dir, [(SERVICE, [])]).leaves[SERVICE]
    return service_key, leaf


@pytest.fixture(params=[False, True], ids=["plaintext", "tls"])
async def interop(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str
) -> AsyncIterator[Interop]:
    fed = testing.InProcessFederation(tmp_path, [SPOKE], redis_url=redis_url, tls=request.param)
    try:
        files = await fed.prepare()
        service_key, leaf = _admit_service(files)
        spoke_public = (files.keys_dir / f"{SPOKE}.pub").read_text().split()[0]
        await fed.start()
        yield Interop(files, fed.hub_address, service_key, spoke_public, leaf)
    finally:
        await fed.stop()
