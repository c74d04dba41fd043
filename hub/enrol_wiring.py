"""Enrolment inside hubd: the membership, the hub-level verbs and EnrolService, wired up.

Without ``[tls]`` EnrolService is served on the hub's own port (loopback only, like
everything else then), and tokens carry that port. With ``[tls]`` the hub's port asks every
client for a certificate, which a new spoke does not have yet: EnrolService gets a listener
of its own, ``enrol_listen``, whose TLS presents the hub's certificate *and* the CA (so the
spoke can match the CA against its token's fingerprint) and asks for none. Without
``enrol_listen`` and ``enrol_ca_key_file`` a TLS hub enrols nobody (ENROLMENT_DISABLED);
static spokes work as ever.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hubspoke import errors, keys
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import enrol_service_pb2

from .config import HubConfig
from .enrol import EnrolCalls, EnrolSettings
from .enrol_service import EnrolServicer
from .membership import MemberKeys, Membership
from .membership_store import MembershipStore
from .registry import SpokeRegistry
from .service import HubServicer

__all__ = ["ENROL_SERVICE", "EnrolWiring", "ca_fingerprint", "start"]

log = structlog.get_logger("hubspoke.hub.enrol")

ENROL_SERVICE = enrol_service_pb2.DESCRIPTOR.services_by_name["EnrolService"]


def ca_fingerprint(ca_file: Path) -> bytes:
    """SHA-256 of the (first) CA certificate's DER: what tokens pin."""
    cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


class EnrolWiring:
    """The enrolment parts of one hubd; :meth:`close` releases them."""

    def __init__(self, cfg: HubConfig, calls: EnrolCalls, membership: Membership) -> None:
        self._cfg = cfg
        self.calls = calls
        self.membership = membership
        self.servicer = EnrolServicer(calls, membership)
        self._server: sgrpc.BuiltServer | None = None

    async def serve(
        self, main: grpc.aio.Server, main_port: int, options: sgrpc.ServerOptions
    ) -> None:
        """Serve EnrolService: on ``main`` without TLS, else on ``enrol_listen``."""
        cfg = self._cfg
        service = sgrpc.Service(ENROL_SERVICE, self.servicer)
        if cfg.tls is None:
            main.add_generic_rpc_handlers((service.handler(),))
            host = cfg.listen.rpartition(":")[0]
            self._address(cfg.enrol_address or f"{host}:{main_port}")
            return
        if not cfg.enrol_listen or cfg.enrol_ca_key_file is None:
            log.info("enrolment_disabled", hint="set enrol_listen and enrol_ca_key_file")
            return
        tls = cfg.tls
        chain = tls.cert_file.read_bytes().rstrip(b"\n") + b"\n" + tls.ca_file.read_bytes()
        creds = grpc.ssl_server_credentials(
            [(tls.key_file.read_bytes(), chain)], require_client_auth=False
        )
        try:
            self._server = sgrpc.build_server([service], cfg.enrol_listen, options, creds)
        except RuntimeError as exc:  # a failed bind
            raise OSError(f"could not bind enrol_listen {cfg.enrol_listen}") from exc
        await self._server.server.start()
        host = cfg.enrol_listen.rpartition(":")[0]
        self._address(cfg.enrol_address or f"{host}:{self._server.port}")

    def _address(self, address: str) -> None:
        self.calls.use_settings(replace(self.calls.settings, address=address))
        log.info("enrolment_serving", address=address)

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(1.0)
            self._server = None
        await self.membership.store.close()


async def start(
    cfg: HubConfig,
    key: keys.SigningKey,
    trust: MemberKeys,
    registry: SpokeRegistry,
    servicer: HubServicer,
) -> EnrolWiring:
    """Open the membership (its own Redis client), attach it to ``trust`` and ``registry``,
    and let ``servicer`` answer the enrolment verbs."""
    store = MembershipStore.from_url(cfg.redis, cfg.name, cfg.redis_timeout_s)
    membership = Membership(store)
    trust.attach(membership)
    registry.use_membership(membership)
    settings = EnrolSettings(
        hub_name=cfg.name,
        key=key,
        token_ttl_s=cfg.enrol_token_ttl_s,
        address="",
        ca_fingerprint=ca_fingerprint(cfg.tls.ca_file) if cfg.tls is not None else b"",
        ca_cert_file=cfg.tls.ca_file if cfg.tls is not None else None,
        ca_key_file=cfg.enrol_ca_key_file,
        cert_days=cfg.enrol_cert_days,
        trust_file=cfg.trust_file,
        policy_file=cfg.policy_file,
        max_skew_s=cfg.max_skew_s,
        rate_per_s=cfg.enrol_rate,
        rate_burst=cfg.enrol_burst,
    )
    calls = EnrolCalls(settings, membership, registry.static_names, trust.static)
    servicer.serve_enrolment(calls)
    try:
        await membership.reload()
    except errors.BackendUnavailableError:  # the hub starts without Redis; read on first use
        log.warning("membership_unread", hint="Redis does not answer; read on first use")
    return EnrolWiring(cfg, calls, membership)
