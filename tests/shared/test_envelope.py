"""Envelope signing: known-answer vectors (also in docs/protocol.md) and tamper rejection."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from hubspoke import envelope, errors, keys
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.trust import Role, TrustedKey, TrustStore

SEED = bytes(range(32))
PAYLOAD = b"\x0a\x06cmd-01\x12\x08operator"
VECTOR_PUBLIC = "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
VECTOR_KEY_ID = "vector/56475aa75463474c"
VECTOR_PAE = (
    b"DSSEv1 43 application/vnd.federation.v1.command+proto 18 \n\x06cmd-01\x12\x08operator"
)
VECTOR_SIG = (
    "6b29fd561c6887b4d13ff507eda25bac7c5cd8237c3581778e3d803464881fbd"
    "600a4a18fbc77cb4ff1aa92cb2f6e177eeac930c237edeea2b43b2df42909906"
)


def _vector_key() -> keys.SigningKey:
    return keys.SigningKey("vector", Ed25519PrivateKey.from_private_bytes(SEED))


def _trust(*ks: keys.SigningKey, role: Role = Role.CLIENT) -> TrustStore:
    return TrustStore(TrustedKey(k.name, role, k.public, keys.fingerprint(k.public)) for k in ks)


def test_known_answer_vector() -> None:
    k = _vector_key()
    assert keys.encode_public(k.public) == VECTOR_PUBLIC
    assert k.key_id == VECTOR_KEY_ID
    assert envelope.pae(envelope.PAYLOAD_TYPE_COMMAND, PAYLOAD) == VECTOR_PAE
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, k)
    assert env.signatures[0].sig.hex() == VECTOR_SIG


def _verify(env: command_pb2.SignedEnvelope, trust: TrustStore) -> envelope.Verified:
    return envelope.verify(
        env, payload_type=envelope.PAYLOAD_TYPE_COMMAND, trust=trust, roles={Role.CLIENT}
    )


def test_verify_returns_the_exact_signed_bytes() -> None:
    k = _vector_key()
    v = _verify(envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, k), _trust(k))
    assert v.payload == PAYLOAD
    assert v.peer == "vector"


def _flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_bit_flip_is_rejected(data: st.DataObject) -> None:
    k = _vector_key()
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, k)
    where = data.draw(st.sampled_from(["payload", "type", "sig", "key_id"]))
    bad = command_pb2.SignedEnvelope()
    bad.CopyFrom(env)
    if where == "payload":
        bad.payload = _flip(env.payload, data.draw(st.integers(0, len(env.payload) * 8 - 1)))
    elif where == "type":
        t = env.payload_type.encode()
        bad.payload_type = _flip(t, data.draw(st.integers(0, len(t) * 8 - 1))).decode("latin-1")
    elif where == "sig":
        s = env.signatures[0].sig
        bad.signatures[0].sig = _flip(s, data.draw(st.integers(0, len(s) * 8 - 1)))
    else:
        kid = env.signatures[0].key_id.encode()
        bad.signatures[0].key_id = _flip(kid, data.draw(st.integers(0, len(kid) * 8 - 1))).decode(
            "latin-1"
        )
        if (
            bad.signatures[0].key_id.rpartition("/")[2]
            == env.signatures[0].key_id.rpartition("/")[2]
        ):
            return  # the flip hit the name part of the hint, which carries no trust: still valid
    with pytest.raises((errors.SignatureInvalidError, errors.InvalidCommandError)):
        _verify(bad, _trust(k))


def test_unknown_key_is_rejected() -> None:
    k, other = _vector_key(), keys.generate("other")
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, other)
    with pytest.raises(errors.SignatureInvalidError, match="unknown"):
        _verify(env, _trust(k))


def test_forged_key_id_hint_gives_no_trust() -> None:
    """An attacker naming a trusted key's fingerprint but signing with their own key."""
    k, attacker = _vector_key(), keys.generate("attacker")
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, attacker)
    env.signatures[0].key_id = k.key_id
    with pytest.raises(errors.SignatureInvalidError):
        _verify(env, _trust(k))


def test_wrong_role_is_rejected() -> None:
    k = _vector_key()
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, k)
    with pytest.raises(errors.SignatureInvalidError):
        _verify(env, _trust(k, role=Role.HUB))


def test_mismatched_and_unknown_payload_types_are_invalid_argument() -> None:
    k = _vector_key()
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_REPLY, k)
    with pytest.raises(errors.InvalidCommandError, match="does not fit"):
        _verify(env, _trust(k))
    env.payload_type = "text/plain"
    with pytest.raises(errors.InvalidCommandError, match="unknown"):
        _verify(env, _trust(k))


def test_unsigned_and_oversigned_envelopes_are_rejected() -> None:
    k = _vector_key()
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, k)
    unsigned = command_pb2.SignedEnvelope(payload=PAYLOAD, payload_type=env.payload_type)
    with pytest.raises(errors.SignatureInvalidError):
        _verify(unsigned, _trust(k))
    many = command_pb2.SignedEnvelope()
    many.CopyFrom(env)
    for _ in range(envelope.MAX_SIGNATURES):
        many.signatures.append(env.signatures[0])
    with pytest.raises(errors.InvalidCommandError):
        _verify(many, _trust(k))


def test_key_outside_validity_window_or_revoked_is_unknown() -> None:
    k = _vector_key()
    fp = keys.fingerprint(k.public)
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = TrustStore([TrustedKey("vector", Role.CLIENT, k.public, fp, None, past)])
    env = envelope.sign(PAYLOAD, envelope.PAYLOAD_TYPE_COMMAND, k)
    with pytest.raises(errors.SignatureInvalidError):
        _verify(env, expired)
    revoked = TrustStore([TrustedKey("vector", Role.CLIENT, k.public, fp)], revoked=[fp])
    with pytest.raises(errors.SignatureInvalidError):
        _verify(env, revoked)
