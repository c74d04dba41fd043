"""Signed envelopes: Ed25519 over DSSE's pre-authentication encoding (PAE).

The signing input is, byte for byte (docs/protocol.md)::

    "DSSEv1" SP LEN(payload_type) SP payload_type SP LEN(payload) SP payload

where SP is one space (0x20) and LEN is the byte length in ASCII decimal. The payload
type names the schema, so a signature over a Command can never pass as a Reply.

``verify`` checks a signature by a trusted, valid key over the *exact* payload bytes and
hands those bytes back; only then may the caller parse them. Nothing is re-serialized.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from . import errors
from .gen.federation.v1 import command_pb2
from .keys import SigningKey
from .trust import Role, TrustedKey, TrustStore

PAYLOAD_TYPE_COMMAND = "application/vnd.federation.v1.command+proto"
PAYLOAD_TYPE_RELAY = "application/vnd.federation.v1.relay+proto"
PAYLOAD_TYPE_REPLY = "application/vnd.federation.v1.reply+proto"
KNOWN_PAYLOAD_TYPES = frozenset({PAYLOAD_TYPE_COMMAND, PAYLOAD_TYPE_RELAY, PAYLOAD_TYPE_REPLY})

MAX_SIGNATURES = 4
"""Signatures examined per envelope; more is rejected, which bounds verify work per request."""

_SIG_LEN = 64


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of a payload and its type."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def sign(payload: bytes, payload_type: str, key: SigningKey) -> command_pb2.SignedEnvelope:
    sig = key.private.sign(pae(payload_type, payload))
    return command_pb2.SignedEnvelope(
        payload=payload,
        payload_type=payload_type,
        signatures=[command_pb2.Signature(sig=sig, key_id=key.key_id)],
    )


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of a successful verification: who signed, and the exact bytes signed."""

    signer: TrustedKey
    payload: bytes
    payload_type: str

    @property
    def peer(self) -> str:
        return self.signer.peer


def verify(
    envelope: command_pb2.SignedEnvelope,
    *,
    payload_type: str,
    trust: TrustStore,
    roles: Collection[Role],
    now: dt.datetime | None = None,
) -> Verified:
    """Verify an envelope of the expected type, signed by a trusted key in one of ``roles``.

    Raises:
        InvalidCommandError: the envelope is empty or of another payload type.
        SignatureInvalidError: no signature is by a known, valid key of an allowed role, or
            no signature verifies.
    """
    if envelope.payload_type != payload_type:
        if envelope.payload_type not in KNOWN_PAYLOAD_TYPES:
            raise errors.InvalidCommandError("unknown payload_type")
        raise errors.InvalidCommandError(
            f"payload_type {envelope.payload_type} does not fit this call; want {payload_type}"
        )
    if not envelope.payload:
        raise errors.InvalidCommandError("envelope has no payload")
    if not envelope.signatures:
        raise errors.SignatureInvalidError("envelope is not signed")
    if len(envelope.signatures) > MAX_SIGNATURES:
        raise errors.InvalidCommandError(f"more than {MAX_SIGNATURES} signatures")
    now = now or dt.datetime.now(dt.UTC)
    message = pae(envelope.payload_type, envelope.payload)
    known = False
    for sig in envelope.signatures:
        fp = sig.key_id.rpartition("/")[2]
        for cand in trust.candidates(fp, now):
            known = True
            if cand.role not in roles or len(sig.sig) != _SIG_LEN:
                continue
            try:
                cand.public.verify(sig.sig, message)
            except InvalidSignature:
                continue
            return Verified(signer=cand, payload=envelope.payload, payload_type=payload_type)
    if not known:
        raise errors.SignatureInvalidError("signed by an unknown, expired or revoked key")
    raise errors.SignatureInvalidError("no valid signature by a key trusted for this role")
