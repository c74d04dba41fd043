"""A spoke joins a federation by two files: a join request out, a join reply back.

``hubctl init spoke`` writes the request on the spoke's host; ``hubctl init add-spoke`` reads
it on the hub's host and writes the reply; ``hubctl init accept`` reads the reply on the spoke's
host. Neither file holds a secret: private keys never leave the host that made them.

The request (TOML, ``NAME.request.toml``) carries the spoke's name, its Ed25519 public key,
the address the hub dials, its labels, and a PKCS#10 certificate request for its transport
key (ECDSA P-256; the CSR's own signature proves the spoke holds that key). The reply
(``NAME.reply.toml``) carries the certificate the federation CA signed, the CA certificate,
and the hub's trust store and policy at that moment.

These are the messages an enrolment protocol would carry over the wire; only the transport
(copying two files) is manual today.

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── JoinError   a request, reply, CSR or CA is malformed or does not match (one line)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hubspoke import keys
from hubspoke import tls as stls
from hubspoke.errors import ConfigError

__all__ = [
    "REPLY_KIND",
    "REQUEST_KIND",
    "JoinError",
    "JoinReply",
    "JoinRequest",
    "make_csr",
    "sign_csr",
    "toml_string",
    "verify_leaf",
]

REQUEST_KIND: Final = "hubspoke.join-request.v1"
REPLY_KIND: Final = "hubspoke.join-reply.v1"
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""Peer names (as ``hubctl keygen`` and ``certs init`` accept them)."""
"""Certificates start a little in the past, for hosts whose clocks lag."""


class JoinError(ConfigError):
    """A join request, reply, CSR or CA is malformed or does not match; the message is one line."""


def toml_string(text: str) -> str:
    """``text`` as a TOML string: a multi-line literal when it can be, else a basic string."""
    printable = all(c == "\n" or (c >= " " and c != "\x7f") for c in text)
    if printable and "'''" not in text and not text.endswith("'"):
        return "'''\n" + text + "'''"
    return json.dumps(text, ensure_ascii=True)  # JSON escapes are TOML basic-string escapes


def _no_labels() -> Mapping[str, str]:
    return MappingProxyType({})


def _read_toml(path: Path, kind: str, what: str) -> dict[str, object]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise JoinError(f"{what} not found: {path}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JoinError(f"{what} {path} is not valid TOML: {exc}") from exc
    if raw.get("kind") != kind:
        raise JoinError(f"{path} is not a {what} (kind must be {kind!r})")
    return raw


def _text(raw: Mapping[str, object], key: str, path: Path) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise JoinError(f"{path}: {key} must be a non-empty string")
    return value


def _check_name(name: str, where: str) -> None:
    if not NAME_RE.fullmatch(name) or name == "ca":
        raise JoinError(
            f"{where}: name {name!r} must be 1-63 characters of A-Z a-z 0-9 . _ - starting "
            "alphanumeric, and not 'ca'"
        )


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What a spoke sends to join: who it is and where the hub reaches it."""

    name: str
    public_key: str
    """Its Ed25519 signing key, ``ed25519:BASE64``."""
    address: str
    """``host:port`` the hub dials."""
    csr_pem: str
    """PKCS#10 request for its transport certificate (CN = name)."""
    labels: Mapping[str, str] = field(default_factory=_no_labels)

    def to_toml(self) -> str:
        labels = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in self.labels.items())
        return (
            "# A request to join a Hubspoke federation as a spoke (written by hubctl init spoke).\n"
            "# It holds no secret. On the hub's host run:\n"
            f"#   hubctl init add-spoke --hub-dir HUB_DIR {self.name}.request.toml\n"
            f"kind = {json.dumps(REQUEST_KIND)}\n"
            f"name = {json.dumps(self.name)}\n"
            'role = "spoke"\n'
            f"public_key = {json.dumps(self.public_key)}\n"
            f"address = {json.dumps(self.address)}\n"
            f"labels = {{ {labels} }}\n"
            f"csr = {toml_string(self.csr_pem)}\n"
        )

    @classmethod
    def from_file(cls, path: Path) -> JoinRequest:
        """Read and check a request: the name, the key, and the CSR's own signature."""
        raw = _read_toml(path, REQUEST_KIND, "join request")
        name = _text(raw, "name", path)
        _check_name(name, str(path))
        if raw.get("role") != "spoke":
            raise JoinError(f"{path}: role must be 'spoke'")
        public_key = _text(raw, "public_key", path)
        try:
            keys.decode_public(public_key)
        except keys.KeyFileError as exc:
            raise JoinError(f"{path}: {exc}") from exc
        labels = raw.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise JoinError(f"{path}: labels must be a table of strings")
        request = cls(
            name=name,
            public_key=public_key,
            address=_text(raw, "address", path),
            csr_pem=_text(raw, "csr", path),
            labels=MappingProxyType(dict(labels)),
        )
        request.csr()  # checks the CSR
        return request

    def csr(self) -> x509.CertificateSigningRequest:
        """The CSR, checked: well-formed, self-signed, an ECDSA P-256 key, CN = our name."""
        try:
            csr = x509.load_pem_x509_csr(self.csr_pem.encode())
        except ValueError as exc:
            raise JoinError(f"the certificate request of {self.name!r} is not PEM") from exc
        if not csr.is_signature_valid:
            raise JoinError(f"the certificate request of {self.name!r} has a bad signature")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise JoinError(f"the certificate request of {self.name!r} is not for a P-256 key")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [a.value for a in cns] != [self.name]:
            raise JoinError(f"the certificate request of {self.name!r} is for another name")
        return csr


@dataclass(frozen=True, slots=True)
class JoinReply:
    """What the hub sends back: the certificate, the CA, and the files the spoke starts with."""

    name: str
    hub: str
    """The hub's peer name."""
    cert_pem: str
    ca_pem: str
    trust_toml: str
    policy_toml: str

    def to_toml(self) -> str:
        return (
            f"# The hub's reply to {self.name}'s join request (by hubctl init add-spoke).\n"
            "# It holds no secret. On the spoke's host run:\n"
            f"#   hubctl init accept --dir SPOKE_DIR {self.name}.reply.toml\n"
            f"kind = {json.dumps(REPLY_KIND)}\n"
            f"name = {json.dumps(self.name)}\n"
            f"hub = {json.dumps(self.hub)}\n"
            f"certificate = {toml_string(self.cert_pem)}\n"
            f"ca_certificate = {toml_string(self.ca_pem)}\n"
            f"trust = {toml_string(self.trust_toml)}\n"
            f"policy = {toml_string(self.policy_toml)}\n"
        )

    @classmethod
    def from_file(cls, path: Path) -> JoinReply:
        raw = _read_toml(path, REPLY_KIND, "join reply")
        name = _text(raw, "name", path)
        _check_name(name, str(path))
        return cls(
            name=name,
            hub=_text(raw, "hub", path),
            cert_pem=_text(raw, "certificate", path),
            ca_pem=_text(raw, "ca_certificate", path),
            trust_toml=_text(raw, "trust", path),
            policy_toml=_text(raw, "policy", path),
        )


def make_csr(name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh ECDSA P-256 transport key and a CSR for it (CN = ``name``), as PEM text."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def _load_ca(ca_cert: Path, ca_key: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    problem = keys.owner_only_problem(ca_key, "CA key file")
    if problem:
        raise JoinError(problem)
    try:
        key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    except FileNotFoundError as exc:
        raise JoinError(f"CA file not found: {exc.filename}") from exc
    except ValueError as exc:
        raise JoinError(f"CA files {ca_cert} and {ca_key} are not PEM") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        raise JoinError(f"CA certificate {ca_cert} does not match {ca_key}")
    return key, cert


def sign_csr(request: JoinRequest, ca_cert: Path, ca_key: Path, days: int = 825) -> tuple[str, str]:
    """Sign ``request``'s CSR with the CA: ``(leaf PEM, CA PEM)``.

    The leaf is shaped as :func:`hubspoke.tls.init_pki` shapes its own: CN and DNS SAN = the
    peer's name, EKU serverAuth + clientAuth, at most as long-lived as the CA.
    """
    csr = request.csr()
    key, ca = _load_ca(ca_cert, ca_key)
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):  # request.csr() checked it already
        raise JoinError(f"the certificate request of {request.name!r} is not for a P-256 key")
    sans = [x509.DNSName(request.name.lower())]
    cert = stls.issue_leaf(request.name, sans, public, key, ca, dt.datetime.now(dt.UTC), days)
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem).decode(), ca.public_bytes(pem).decode()


def verify_leaf(cert_pem: str, ca_pem: str, tls_key: Path, name: str) -> None:
    """Check a reply's certificate: the CA signed it, it names ``name``, it is ``tls_key``'s.

    Raises:
        JoinError: any of these does not hold.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        key = serialization.load_pem_private_key(tls_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise JoinError(f"transport key not found: {tls_key}") from exc
    except ValueError as exc:
        raise JoinError(f"the reply's certificates or {tls_key} are not PEM") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise JoinError("the reply's certificate is not signed by its CA certificate") from exc
    if cert.public_key() != key.public_key():
        raise JoinError(f"the reply's certificate is not for this host's key {tls_key}")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [name]:
        raise JoinError(f"the reply's certificate is not for {name!r}")
