"""Ed25519 key files and public-key text encoding.

A private key is a PKCS#8 PEM file readable by its owner only (mode 0600); a file that
group or others can read is refused. A public key travels as text,
``ed25519:<base64 of the 32 raw bytes>``, in ``NAME.pub`` files and trust stores.
A key's fingerprint is the first 16 hex digits of SHA-256 over the raw public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import ConfigError

PUBLIC_PREFIX = "ed25519:"


class KeyFileError(ConfigError):
    """A key file or key text is missing, malformed or unsafe."""


def fingerprint(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of SHA-256 over the raw 32 public-key bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_public(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_public(text: str) -> Ed25519PublicKey:
    text = text.strip()
    if not text.startswith(PUBLIC_PREFIX):
        raise KeyFileError(f"public key must start with {PUBLIC_PREFIX!r}")
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise KeyFileError("public key is not valid base64") from exc
    if len(raw) != 32:
        raise KeyFileError(f"public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key with the name of the peer it belongs to. Its repr never shows the key."""

    name: str
    private: Ed25519PrivateKey
    key_id: str = field(init=False)
    """``NAME/fingerprint``, computed once: every signature carries it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", f"{self.name}/{fingerprint(self.public)}")

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r}, key_id={self.key_id!r}, private=<redacted>)"


def generate(name: str) -> SigningKey:
    return SigningKey(name=name, private=Ed25519PrivateKey.generate())


def write_keypair(key: SigningKey, out_dir: Path) -> tuple[Path, Path]:
    """Write ``NAME.key`` (mode 0600, created exclusively) and ``NAME.pub``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path = out_dir / f"{key.name}.key"
    pub_path = out_dir / f"{key.name}.pub"
    pem = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: never overwrite an existing key; 0600 from the first byte, no chmod race.
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_text(f"{encode_public(key.public)} {key.name}\n")
    return priv_path, pub_path


def owner_only_problem(path: Path, what: str) -> str:
    """Why a secret file must not be used ("" if it may): missing, or readable or writable
    by group or others. Shared by signing keys and TLS keys."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{what} not found: {path}"
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
            f"it must be readable by its owner only (chmod 600 {path})"
        )
    return ""


def load_private(path: Path, name: str) -> SigningKey:
    """Load a private key file, refusing one that group or others may read or write."""
    problem = owner_only_problem(path, "private key file")
    if problem:
        raise KeyFileError(problem)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise KeyFileError(f"private key file {path} is not a PEM private key") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"private key file {path} is not an Ed25519 key")
    return SigningKey(name=name, private=loaded)


def load_public_file(path: Path) -> Ed25519PublicKey:
    """Read a ``NAME.pub`` file: the encoded key, optionally followed by a comment."""
    try:
        first = path.read_text().split()
    except FileNotFoundError as exc:
        raise KeyFileError(f"public key file not found: {path}") from exc
    if not first:
        raise KeyFileError(f"public key file {path} is empty")
    return decode_public(first[0])
