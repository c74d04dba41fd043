"""Enrolment tokens and the payload types of the enrolment exchange (docs/protocol.md §13).

A token is ``hsp1.`` followed by the unpadded base64url of a serialized ``EnrolToken``: 32
secret bytes, the name it enrols, and the pins of the hub that issued it (its enrolment
address, its name, its Ed25519 public key, and SHA-256 of the federation CA certificate, if
it speaks TLS). The hub keeps only SHA-256 of the secret (:func:`secret_hash`).

Exception hierarchy::

    hubspoke.errors.ConfigError
     └── TokenFormatError   a token that does not parse (one line, never the token itself)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

from google.protobuf.message import DecodeError

from .errors import ConfigError
from .gen.federation.v1 import enrol_pb2

__all__ = [
    "PAYLOAD_TYPE_ANSWER",
    "PAYLOAD_TYPE_HUB_PROOF",
    "PAYLOAD_TYPE_REQUEST",
    "PREFIX",
    "SECRET_BYTES",
    "TokenFormatError",
    "decode",
    "encode",
    "secret_hash",
]

PREFIX: Final = "hsp1."
SECRET_BYTES: Final = 32
MAX_TOKEN_CHARS: Final = 4096
PAYLOAD_TYPE_HUB_PROOF: Final = "application/vnd.federation.v1.enrol-hub-proof+proto"
PAYLOAD_TYPE_REQUEST: Final = "application/vnd.federation.v1.enrol-request+proto"
PAYLOAD_TYPE_ANSWER: Final = "application/vnd.federation.v1.enrol-answer+proto"


class TokenFormatError(ConfigError):
    """The text is not an enrolment token of this version."""


def encode(token: enrol_pb2.EnrolToken) -> str:
    raw = token.SerializeToString()
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode(text: str) -> enrol_pb2.EnrolToken:
    """Parse a token and check its shape (secret length, a hub key, an address, a name).

    Raises:
        TokenFormatError: it does not start with ``hsp1.`` or does not parse.
    """
    text = text.strip()
    if not text.startswith(PREFIX) or len(text) > MAX_TOKEN_CHARS:
        raise TokenFormatError(f"not an enrolment token (it must start with {PREFIX!r})")
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        token = enrol_pb2.EnrolToken.FromString(raw)
    except (binascii.Error, ValueError, DecodeError) as exc:
        raise TokenFormatError("the enrolment token is damaged (base64url or its fields)") from exc
    if (
        len(token.secret) != SECRET_BYTES
        or len(token.hub_public_key) != 32
        or not token.address
        or not token.name
        or not token.hub
        or len(token.ca_fingerprint) not in (0, 32)
    ):
        raise TokenFormatError("the enrolment token is incomplete (secret, hub key, address)")
    return token


def secret_hash(secret: bytes) -> str:
    """What the hub stores and looks a token up by: SHA-256 of its secret, hex."""
    return hashlib.sha256(secret).hexdigest()
