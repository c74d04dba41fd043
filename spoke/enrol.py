"""``spoked --enroll TOKEN``: join a federation with a one-time token, then start as usual.

In order, and refusing at the first step that fails (nothing is written until the hub's
signed answer is checked):

1. The token (``hubspoke.enrol_token``) must enrol this spoke's configured name.
2. If it pins a CA, the hub's TLS certificate chain is read without trusting it, the CA whose
   SHA-256 is the pin is picked out of it, the hub's certificate must be issued by that CA,
   and every later call dials over TLS with that CA as the only root: else "token presented
   to another hub".
3. ``ProveHub``: the hub signs a fresh random challenge; the signature must be by the key the
   token pins, else "token presented to another hub". Only then is the token sent.
4. A new Ed25519 key (and, with TLS, a new P-256 key and its CSR) is made here; no private
   key leaves this host. ``EnrollSpoke`` carries the token, the public key, the CSR, the
   profiles, the version and the listen address, signed by the new key.
5. The answer must be signed by the pinned key and bound to the request (SHA-256 of its
   bytes); its certificate must be issued by the pinned CA for this name and key.
6. Written: the key (0600, never over an existing one), the TLS key, certificate and CA (with
   ``[tls]``), the trust store (the hub's, which must hold the pinned hub key), and the
   policy unless one exists.

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── EnrolError   enrolment failed or was refused (one line)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import socket
import ssl
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hubspoke import commands, envelope, errors, keys, version
from hubspoke import enrol_token as tokens
from hubspoke import grpc as sgrpc
from hubspoke import tls as stls
from hubspoke.gen.federation.v1 import enrol_pb2, enrol_service_pb2, enrol_service_pb2_grpc
from hubspoke.hub import init_join
from hubspoke.trust import Role, TrustConfigError, TrustedKey, TrustStore

from .config import SpokeConfig

__all__ = ["ANOTHER_HUB", "EnrolError", "Enrolled", "enrol"]

ANOTHER_HUB: Final = "token presented to another hub"
_ENCODING_DER: Final = 2  # _ssl.ENCODING_DER, which typeshed does not list
CALL_TIMEOUT_S: Final = 15.0
"""Deadline of each enrolment call (and of reading the hub's TLS chain)."""


class EnrolError(errors.ConfigError):
    """Enrolment failed or was refused; the message is one line."""


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What enrolment wrote."""

    name: str
    hub: str
    revision: int
    written: tuple[Path, ...]


async def enrol(cfg: SpokeConfig, text: str) -> Enrolled:
    """Enrol the spoke ``cfg`` describes with the token ``text`` (see the module doc)."""
    try:
        token = tokens.decode(text)
    except tokens.TokenFormatError as exc:
        raise EnrolError(str(exc)) from exc
    if token.name != cfg.name:
        raise EnrolError(f"the token enrols {token.name!r}, but this spoke is named {cfg.name!r}")
    for path in (cfg.key_file, *([cfg.tls.key_file] if cfg.tls else [])):
        if path.exists():
            raise EnrolError(
                f"{path} exists: enrolment makes new keys and never overwrites one "
                "(move it away to enrol again)"
            )
    if token.ca_fingerprint and cfg.tls is None:
        raise EnrolError(
            "the hub speaks TLS: give the spoke's config a [tls] table (cert_file, key_file, "
            "ca_file); enrolment writes those files"
        )
    hub_key = Ed25519PublicKey.from_public_bytes(token.hub_public_key)
    pinned = TrustStore([TrustedKey(token.hub, Role.HUB, hub_key, keys.fingerprint(hub_key))])
    credentials: grpc.ChannelCredentials | None = None
    ca_pem = b""
    if token.ca_fingerprint:
        ca_pem = await asyncio.to_thread(_pinned_ca, token.address, token.ca_fingerprint)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    else:
        try:
            stls.require_loopback("the hub's enrolment address", token.address)
        except stls.TlsError as exc:
            raise EnrolError(str(exc)) from exc
    channel = sgrpc.open_channel(token.address, None, credentials, token.hub)
    try:
        stub = enrol_service_pb2_grpc.EnrolServiceStub(channel)
        await _prove_hub(stub, token, pinned)
        signing = keys.generate(cfg.name)
        tls_key: ec.EllipticCurvePrivateKey | None = None
        csr_pem = ""
        if token.ca_fingerprint:
            tls_key, csr_pem = init_join.make_csr(cfg.name)
        request = enrol_pb2.EnrolmentRequest(
            token=text.strip(),
            name=cfg.name,
            csr_pem=csr_pem,
            profiles=sorted(cfg.profiles),
            version=_version(),
            address=cfg.listen,
            connect=getattr(cfg, "link", "dial") == "connect",
            issue_time=commands.to_timestamp(commands.now()),
        )
        payload = request.SerializeToString()
        signed = envelope.sign(payload, tokens.PAYLOAD_TYPE_REQUEST, signing)
        try:
            response = await stub.EnrollSpoke(
                enrol_service_pb2.EnrolServiceEnrollSpokeRequest(
                    request=signed, public_key=signing.public.public_bytes_raw()
                ),
                timeout=CALL_TIMEOUT_S,
                metadata=version.CALL_METADATA,
            )
        except grpc.aio.AioRpcError as exc:
            raise _refused(exc) from exc
    finally:
        await channel.close(None)
    answer = _answer(response.answer, pinned, payload, cfg.name)
    return _install(cfg, token, answer, signing, tls_key, ca_pem)


def _pinned_ca(address: str, fingerprint: bytes) -> bytes:
    """The CA (PEM) in the hub's TLS chain whose DER hashes to ``fingerprint``, once the hub's
    own certificate is checked to be issued by it. The chain is read without verifying it:
    the pin is what is trusted."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the chain is checked against the pin below
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), CALL_TIMEOUT_S) as raw,
            ctx.wrap_socket(raw) as tls,
        ):
            # Public as get_unverified_chain() from Python 3.13; the same method before.
            sslobj = tls._sslobj  # type: ignore[attr-defined]  # CPython's SSLObject, 3.10+
            chain = [c.public_bytes(_ENCODING_DER) for c in sslobj.get_unverified_chain()]
    except (OSError, ValueError) as exc:
        raise EnrolError(f"cannot reach the hub at {address} over TLS: {exc}") from exc
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    cas = [
        c
        for c, der in zip(certs, chain, strict=True)
        if hashlib.sha256(der).digest() == fingerprint
    ]
    if not certs or not cas:
        raise EnrolError(f"{ANOTHER_HUB}: its TLS chain holds no CA with the pinned fingerprint")
    try:
        certs[0].verify_directly_issued_by(cas[0])
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrolError(f"{ANOTHER_HUB}: its certificate is not issued by the pinned CA") from exc
    return cas[0].public_bytes(serialization.Encoding.PEM)


async def _prove_hub(
    stub: enrol_service_pb2_grpc.EnrolServiceAsyncStub,
    token: enrol_pb2.EnrolToken,
    pinned: TrustStore,
) -> None:
    challenge = secrets.token_bytes(32)
    try:
        response = await stub.ProveHub(
            enrol_service_pb2.EnrolServiceProveHubRequest(challenge=challenge),
            timeout=CALL_TIMEOUT_S,
            metadata=version.CALL_METADATA,
        )
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise EnrolError(f"cannot reach the hub at {token.address}: {code.name}") from exc
        raise EnrolError(f"{ANOTHER_HUB}: it does not answer ProveHub ({code.name})") from exc
    try:
        verified = envelope.verify(
            response.proof,
            payload_type=tokens.PAYLOAD_TYPE_HUB_PROOF,
            trust=pinned,
            roles={Role.HUB},
        )
        proof = enrol_pb2.HubProof.FromString(verified.payload)
    except Exception as exc:  # SignatureInvalidError, InvalidCommandError, DecodeError
        raise EnrolError(f"{ANOTHER_HUB}: it does not hold the key the token pins") from exc
    if proof.challenge != challenge or proof.hub != token.hub:
        raise EnrolError(f"{ANOTHER_HUB}: its proof answers another challenge or hub")


def _refused(exc: grpc.aio.AioRpcError) -> EnrolError:
    failure = sgrpc.from_rpc_error(exc)
    reason = f" [{failure.reason}]" if failure.reason else ""
    return EnrolError(f"the hub refused the enrolment: {failure.message}{reason}")


def _answer(
    signed: object, pinned: TrustStore, payload: bytes, name: str
) -> enrol_pb2.EnrolmentAnswer:
    try:
        verified = envelope.verify(
            signed,  # type: ignore[arg-type]  # a SignedEnvelope from the response
            payload_type=tokens.PAYLOAD_TYPE_ANSWER,
            trust=pinned,
            roles={Role.HUB},
        )
        answer = enrol_pb2.EnrolmentAnswer.FromString(verified.payload)
    except Exception as exc:  # SignatureInvalidError, InvalidCommandError, DecodeError
        raise EnrolError(f"{ANOTHER_HUB}: its answer is not signed by the pinned key") from exc
    if answer.request_digest != commands.digest(payload) or answer.name != name:
        raise EnrolError("the hub's answer does not answer this request")
    return answer


def _install(
    cfg: SpokeConfig,
    token: enrol_pb2.EnrolToken,
    answer: enrol_pb2.EnrolmentAnswer,
    signing: keys.SigningKey,
    tls_key: ec.EllipticCurvePrivateKey | None,
    ca_pem: bytes,
) -> Enrolled:
    try:
        store = TrustStore.from_mapping(tomllib.loads(answer.trust_toml), "the hub's trust store")
    except (tomllib.TOMLDecodeError, TrustConfigError) as exc:
        raise EnrolError(f"the hub's trust store does not parse: {exc}") from exc
    pinned_fp = keys.fingerprint(Ed25519PublicKey.from_public_bytes(token.hub_public_key))
    if store.role_of(token.hub) is not Role.HUB or pinned_fp not in {
        k.fingerprint for k in store.keys_of(token.hub)
    }:
        raise EnrolError("the hub's trust store does not hold the pinned hub key")
    written: list[Path] = []
    if cfg.tls is not None and tls_key is not None:
        if (
            hashlib.sha256(
                x509.load_pem_x509_certificate(answer.ca_pem.encode()).public_bytes(
                    serialization.Encoding.DER
                )
            ).digest()
            != token.ca_fingerprint
            or answer.ca_pem.encode().strip() != ca_pem.strip()
        ):
            raise EnrolError("the hub answered another CA than the pinned one")
        _write_new(cfg.tls.key_file, _pem(tls_key))
        try:
            init_join.verify_leaf(answer.certificate_pem, answer.ca_pem, cfg.tls.key_file, cfg.name)
        except init_join.JoinError as exc:
            cfg.tls.key_file.unlink()
            raise EnrolError(str(exc)) from exc
        _replace(cfg.tls.cert_file, answer.certificate_pem)
        _replace(cfg.tls.ca_file, answer.ca_pem)
        written += [cfg.tls.key_file, cfg.tls.cert_file, cfg.tls.ca_file]
    _write_new(cfg.key_file, _pem(signing.private))
    _replace(cfg.trust_file, answer.trust_toml)
    written += [cfg.key_file, cfg.trust_file]
    if cfg.policy_file is not None and not cfg.policy_file.exists():
        _replace(cfg.policy_file, answer.policy_toml)
        written.append(cfg.policy_file)
    return Enrolled(cfg.name, token.hub, answer.revision, tuple(written))


def _pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]  # Ed25519 or EC key
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".enrol-tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _version() -> str:
    try:
        return metadata.version("hubspoke")
    except metadata.PackageNotFoundError:
        return "unknown"
