"""hub/audit_chain.py's chaining, hash and stream fields, built without per-field lookups
(issue 13, round 3), give the bytes and hashes of the straightforward form they replaced
(below, as it was), for entries with every field varied: the chain and its verification
(hub/audit_verify.py) are unchanged."""

from __future__ import annotations

import base64
import hashlib
import random
import struct

from hubspoke.hub.audit_chain import DOMAIN, FIELDS, Entry, entry_hash, from_fields

_BYTES = frozenset({"request", "replies"})


def _value(entry: Entry, name: str) -> bytes:
    raw = getattr(entry, name)
    return raw if isinstance(raw, bytes) else str(raw).encode("utf-8")


def _reference_hash(entry: Entry) -> str:
    h = hashlib.sha256(DOMAIN)
    for name in FIELDS:
        key = name.encode()
        value = _value(entry, name)
        h.update(struct.pack(">I", len(key)) + key + struct.pack(">I", len(value)) + value)
    return h.hexdigest()


def _reference_fields(entry: Entry) -> dict[str, str]:
    out = {
        n: base64.b64encode(_value(entry, n)).decode() if n in _BYTES else str(getattr(entry, n))
        for n in FIELDS
    }
    out["hash"] = entry.hash
    return out


def _text(rng: random.Random) -> str:
    alphabet = 'abcXYZ09-_ {}":,é漢\U0001f600\n'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def test_chained_entries_hash_and_store_as_before() -> None:
    rng = random.Random(13)
    prev = "0" * 64
    for seq in range(1, 400):
        entry = Entry(
            kind=_text(rng),
            action=_text(rng),
            outcome=_text(rng),
            principal=_text(rng),
            command_id=_text(rng),
            audience=_text(rng),
            agent=_text(rng),
            spoke=_text(rng),
            detail=_text(rng),
            request=rng.randbytes(rng.randrange(0, 600)),
            replies=rng.randbytes(rng.randrange(0, 600)),
        )
        time_ms = rng.randrange(0, 2**45)
        link = entry.chained(seq, prev, time_ms, _text(rng))
        bare = Entry(
            **{n: getattr(link, n) for n in FIELDS},  # type: ignore[arg-type]
        )
        assert link.hash == _reference_hash(bare) == entry_hash(link)
        assert (link.seq, link.prev, link.time_ms) == (seq, prev, time_ms)
        fields = link.to_fields()
        assert fields == _reference_fields(link)
        assert list(fields) == [*FIELDS, "hash"]
        flat = link.to_flat()
        assert dict(zip(flat[::2], flat[1::2], strict=True)) == fields
        assert from_fields(fields) == link
        assert from_fields(fields).hash == link.hash
        prev = link.hash
