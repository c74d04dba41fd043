"""Transport TLS: a private CA and its leaf certificates, and gRPC credentials from them.

Transport certificates are ECDSA P-256: gRPC's TLS cannot use Ed25519 certificates
(PITFALLS.md), which stay for message signatures. A federation's CA signs one leaf per
peer; each leaf carries the peer's name as CN and as a DNS SAN, and is good for both
serverAuth and clientAuth, so a hub presents the same certificate to clients and to spokes.

Files written by :func:`init_pki`::

    DIR/ca.crt  DIR/ca.key              the CA (key mode 0600; never overwritten, reused)
    DIR/NAME.crt  DIR/NAME.tls.key      one leaf per peer (key mode 0600)

The ``[tls]`` table of every config file (and its ``PREFIX_TLS_*`` environment variables)::

    [tls]
    cert_file = "tls/hub.crt"
    key_file = "tls/hub.tls.key"       # mode 0600, like every private key
    ca_file = "tls/ca.crt"
    require_client_cert = true          # servers only; the default

Without TLS a process speaks plaintext, which is allowed only on loopback (:func:`is_loopback`).

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── TlsError   a TLS file or option is missing, unsafe or invalid (one line)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import keys
from .errors import ConfigError

__all__ = [
    "CLIENT_OPTIONS",
    "OPTIONS",
    "PLAINTEXT_REFUSED",
    "LeafFiles",
    "PkiFiles",
    "TlsConfig",
    "TlsError",
    "channel_credentials",
    "env_table",
    "init_pki",
    "is_loopback",
    "issue_leaf",
    "require_loopback",
    "server_credentials",
    "tls_config",
    "tls_fields",
]

PLAINTEXT_REFUSED: Final = "plaintext is allowed only on loopback; configure [tls]"
OPTIONS: Final = ("cert_file", "key_file", "ca_file", "require_client_cert")
"""Options of a server's ``[tls]`` table."""
CLIENT_OPTIONS: Final = ("cert_file", "key_file", "ca_file")
"""Options of a client's ``[tls]`` table (a client always presents its certificate)."""
CA_DAYS: Final = 3650
"""The CA outlives the leaves it signs."""

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_BACKDATE: Final = dt.timedelta(minutes=5)  # tolerate peers whose clocks run a little behind
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class TlsError(ConfigError):
    """A TLS file or option is missing, unsafe or invalid; the message is one line."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """One process's transport TLS material."""

    cert_file: Path
    """This peer's certificate (PEM), signed by the CA; presented as server and as client."""
    key_file: Path
    """Its private key (PEM, ECDSA or RSA, mode 0600)."""
    ca_file: Path
    """The CA certificate(s) (PEM) that peers' certificates must chain to."""
    require_client_cert: bool = True
    """Servers: refuse clients that present no certificate signed by the CA."""


@dataclass(frozen=True, slots=True)
class LeafFiles:
    """One peer's certificate and key as :func:`init_pki` wrote them."""

    name: str
    cert_file: Path
    key_file: Path
    sans: tuple[str, ...]
    """Subject alternative names: the peer's name first, then the extra DNS names and IPs."""


@dataclass(frozen=True, slots=True)
class PkiFiles:
    """What :func:`init_pki` wrote (or reused)."""

    ca_cert: Path
    ca_key: Path
    ca_created: bool
    """False when an existing CA signed the new leaves."""
    leaves: Mapping[str, LeafFiles]
    """Peer name → its files, in the order given."""

    def tls_config(self, name: str, *, require_client_cert: bool = True) -> TlsConfig:
        leaf = self.leaves[name]
        return TlsConfig(leaf.cert_file, leaf.key_file, self.ca_cert, require_client_cert)


# -- plaintext policy -------------------------------------------------------------------------


def _host(address: str) -> str:
    if address.startswith("["):  # [v6]:port
        return address[1 : address.find("]")] if "]" in address else address
    if address.count(":") == 1:
        return address.rpartition(":")[0]
    return address  # a bare host, or a bare IPv6 address


def is_loopback(address: str) -> bool:
    """Whether ``host`` or ``host:port`` names only this machine (127.0.0.0/8, ::1, localhost).

    Anything else, including the wildcard ``0.0.0.0`` / ``[::]`` and unresolved names,
    counts as reachable from the network.
    """
    host = _host(address.strip()).lower()
    if host in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(what: str, address: str) -> None:
    """Refuse plaintext to or from a non-loopback ``address``.

    Raises:
        TlsError: ``"<what> <address>: plaintext is allowed only on loopback; configure [tls]"``.
    """
    if not is_loopback(address):
        raise TlsError(f"{what} {address}: {PLAINTEXT_REFUSED}")


# -- the [tls] table --------------------------------------------------------------------------


def env_table(
    env: Mapping[str, str], prefix: str, options: Collection[str] = OPTIONS
) -> dict[str, str]:
    """The ``[tls]`` options set in ``env`` as ``PREFIX`` + the option in upper case."""
    return {opt: env[prefix + opt.upper()] for opt in options if env.get(prefix + opt.upper())}


def tls_fields(
    table: object, base: Path | None, where: str, options: Collection[str] = OPTIONS
) -> dict[str, Path | bool]:
    """Check a ``[tls]`` table (from a file, or :func:`env_table`) and resolve its paths.

    Relative paths resolve against ``base`` (a config file's directory; None: the cwd).
    Booleans may be given as text (``true``/``false``, ``1``/``0``...), as env values are.
    """
    if not isinstance(table, Mapping):
        raise TlsError(f"{where} must be a table ([tls])")
    fields: dict[str, Path | bool] = {}
    for opt, raw in table.items():
        if opt not in options:
            raise TlsError(f"{where}: unknown option {opt!r}")
        if opt == "require_client_cert":
            text = str(raw).strip().lower()
            if not isinstance(raw, bool) and text not in _TRUE | _FALSE:
                raise TlsError(f"{where}.{opt} must be true or false")
            fields[opt] = raw if isinstance(raw, bool) else text in _TRUE
            continue
        if not isinstance(raw, str | Path) or not str(raw):
            raise TlsError(f"{where}.{opt} must be a non-empty path")
        path = Path(raw).expanduser()
        fields[opt] = base / path if base is not None and not path.is_absolute() else path
    return fields


def tls_config(fields: Mapping[str, Path | bool], where: str) -> TlsConfig:
    """Build a :class:`TlsConfig` from checked fields; cert, key and CA are all required."""
    paths = {opt: value for opt, value in fields.items() if isinstance(value, Path)}
    missing = [opt for opt in ("cert_file", "key_file", "ca_file") if opt not in paths]
    if missing:
        raise TlsError(f"{where} needs cert_file, key_file and ca_file (missing {missing[0]})")
    return TlsConfig(
        cert_file=paths["cert_file"],
        key_file=paths["key_file"],
        ca_file=paths["ca_file"],
        require_client_cert=fields.get("require_client_cert", True) is not False,
    )


# -- gRPC credentials -------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise TlsError(f"TLS {what} file not found: {path}") from exc
    except OSError as exc:
        raise TlsError(f"TLS {what} file {path} cannot be read: {exc.strerror}") from exc


def _read_private(path: Path) -> tuple[bytes, PrivateKeyTypes]:
    """The key's PEM bytes and the parsed key, refusing a file group or others may use."""
    problem = keys.owner_only_problem(path, "TLS key file")
    if problem:
        raise TlsError(problem)
    pem = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"TLS key file {path} is not an unencrypted PEM private key") from exc
    if isinstance(key, Ed25519PrivateKey | Ed448PrivateKey):
        raise TlsError(f"TLS key file {path} is an EdDSA key; gRPC TLS needs ECDSA P-256 or RSA")
    return pem, key


def _load(cfg: TlsConfig) -> tuple[bytes, bytes, bytes]:
    """``(ca, key, cert)`` PEM bytes, checked: the certificate belongs to the key."""
    key_pem, key = _read_private(cfg.key_file)
    cert_pem = _read(cfg.cert_file, "certificate")
    ca_pem = _read(cfg.ca_file, "CA")
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise TlsError(f"TLS certificate {cfg.cert_file} or CA {cfg.ca_file} is not PEM") from exc
    if cert.public_key() != key.public_key():
        raise TlsError(f"TLS certificate {cfg.cert_file} does not match key {cfg.key_file}")
    return ca_pem, key_pem, cert_pem


def server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials: our certificate, and (if required) clients verified against the CA.

    Raises:
        TlsError: a file is missing, unsafe, malformed, or the certificate is not the key's.
    """
    ca, key, cert = _load(cfg)
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca,
        require_client_auth=cfg.require_client_cert,
    )


def channel_credentials(cfg: TlsConfig) -> grpc.ChannelCredentials:
    """Channel credentials: verify the server against the CA, present our certificate.

    Raises:
        TlsError: a file is missing, unsafe, malformed, or the certificate is not the key's.
    """
    ca, key, cert = _load(cfg)
    return grpc.ssl_channel_credentials(ca, key, cert)


# -- the CA and its leaves --------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite; the mode applies from the first byte, no chmod race.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _san(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text or not text.isascii() or any(c.isspace() or c in "/:@" for c in text):
        raise TlsError(f"SAN {text!r} is neither an IP address nor an ASCII DNS name")
    return x509.DNSName(text.lower())


def _new_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hubspoke federation CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _load_ca(ca_cert: Path, ca_key: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    _, key = _read_private(ca_key)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"CA key {ca_key} is not an ECDSA key")
    try:
        cert = x509.load_pem_x509_certificate(_read(ca_cert, "CA"))
    except ValueError as exc:
        raise TlsError(f"CA certificate {ca_cert} is not PEM") from exc
    if cert.public_key() != key.public_key():
        raise TlsError(f"CA certificate {ca_cert} does not match {ca_key}")
    return key, cert


def issue_leaf(
    name: str,
    sans: Sequence[x509.GeneralName],
    public: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """A peer's transport certificate for ``public``, signed by the CA: CN ``name``, the given
    SANs, EKU serverAuth + clientAuth, valid ``days`` (never past the CA)."""
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert


def _leaf(
    name: str,
    sans: Sequence[x509.GeneralName],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, issue_leaf(name, sans, key.public_key(), ca_key, ca_cert, now, days)


def init_pki(
    out_dir: Path, names: Sequence[tuple[str, Sequence[str]]], days: int = 825
) -> PkiFiles:
    """Create (or reuse) the CA in ``out_dir`` and sign one leaf per ``(name, extra SANs)``.

    Each leaf's SANs are the name (a DNS name) and then the extras (DNS names or IP
    addresses). An existing ``ca.crt``/``ca.key`` pair signs the new leaves; nothing is ever
    overwritten, and nothing is written unless every leaf's files are new.

    Raises:
        TlsError: a bad name, SAN or ``days``, a duplicate name, or half a CA on disk.
        FileExistsError: a leaf's certificate or key already exists.
    """
    if days < 1:
        raise TlsError("days must be at least 1")
    seen: set[str] = set()
    plans: list[tuple[str, list[x509.GeneralName]]] = []
    for name, extra in names:
        if not _NAME_RE.fullmatch(name) or name == "ca":
            raise TlsError(
                f"name {name!r} must be 1-63 characters of A-Z a-z 0-9 . _ - starting "
                "alphanumeric, and not 'ca'"
            )
        if name in seen:
            raise TlsError(f"name {name!r} is given twice")
        seen.add(name)
        sans: list[x509.GeneralName] = []
        for text in (name, *extra):
            san = _san(text.strip())
            if san not in sans:
                sans.append(san)
        plans.append((name, sans))

    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = out_dir / "ca.crt", out_dir / "ca.key"
    for name, _ in plans:
        for existing in (out_dir / f"{name}.crt", out_dir / f"{name}.tls.key"):
            if existing.exists():
                raise FileExistsError(f"{existing} already exists; refusing to overwrite it")
    now = dt.datetime.now(dt.UTC)
    have = (ca_cert_path.exists(), ca_key_path.exists())
    if have == (True, True):
        ca_key, ca_cert = _load_ca(ca_cert_path, ca_key_path)
    elif have == (False, False):
        ca_key, ca_cert = _new_ca(now)
        _write_new(ca_key_path, _pem_key(ca_key), 0o600)
        _write_new(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        raise TlsError(f"{out_dir} holds only half a CA (ca.crt and ca.key go together)")

    leaves: dict[str, LeafFiles] = {}
    for name, sans in plans:
        key, cert = _leaf(name, sans, ca_key, ca_cert, now, days)
        cert_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.tls.key"
        _write_new(key_path, _pem_key(key), 0o600)
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        shown = tuple(str(san.value) for san in sans)
        leaves[name] = LeafFiles(name, cert_path, key_path, shown)
    return PkiFiles(ca_cert_path, ca_key_path, not any(have), leaves)
