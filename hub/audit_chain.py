"""The audit log's entries and their hash chain: what one entry holds and the bytes hashed.

An entry's hash is SHA-256 over, in this order (docs/security.md, "Audit log")::

    b"hubspoke-audit-v1\\n"
    then for each field of FIELDS, in order: name, value, each as a 4-byte big-endian length
    followed by the bytes (text as UTF-8)

``prev`` (the previous entry's hash, hex; 64 zeros for the first entry) is one of the fields,
so changing, removing or reordering any entry breaks every link after it. Replies are joined
into one field: each a 4-byte big-endian length and the bytes.

In Redis an entry is one stream entry whose fields are FIELDS plus ``hash``; bytes fields
(``request``, ``replies``) are stored base64-encoded (the hub's Redis client decodes text).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hubspoke.commands import from_epoch_ms, to_timestamp
from hubspoke.gen.federation.v1 import audit_pb2

__all__ = ["FIELDS", "GENESIS", "Entry", "entry_hash", "from_fields", "join_replies"]

DOMAIN = b"hubspoke-audit-v1\n"
GENESIS = "0" * 64
"""The ``prev`` of the first entry ever appended."""

FIELDS = (
    "seq",
    "time_ms",
    "hub",
    "kind",
    "action",
    "outcome",
    "principal",
    "command_id",
    "audience",
    "agent",
    "spoke",
    "detail",
    "request",
    "replies",
    "prev",
)
"""The hashed fields, in hashing order; ``request`` and ``replies`` are bytes, the rest text."""

_BYTES_FIELDS = frozenset({"request", "replies"})


def join_replies(replies: Sequence[bytes]) -> bytes:
    """Several serialized envelopes as one field: each as a 4-byte length and its bytes."""
    return b"".join(struct.pack(">I", len(r)) + r for r in replies)


def split_replies(joined: bytes) -> list[bytes]:
    """The inverse of :func:`join_replies` (ValueError if the bytes do not parse)."""
    out: list[bytes] = []
    at = 0
    while at < len(joined):
        if at + 4 > len(joined):
            raise ValueError("truncated reply length")
        (n,) = struct.unpack_from(">I", joined, at)
        at += 4
        if at + n > len(joined):
            raise ValueError("truncated reply")
        out.append(joined[at : at + n])
        at += n
    return out


@dataclass(frozen=True, slots=True)
class Entry:
    """One audit entry; ``seq``, ``prev`` and ``hash`` are set when it is chained."""

    kind: str
    action: str
    outcome: str = "OK"
    principal: str = ""
    command_id: str = ""
    audience: str = ""
    agent: str = ""
    spoke: str = ""
    detail: str = "{}"
    request: bytes = b""
    replies: bytes = b""
    """Joined with :func:`join_replies`."""
    hub: str = ""
    time_ms: int = 0
    seq: int = 0
    prev: str = ""
    hash: str = field(default="", compare=False)

    def value(self, name: str) -> bytes:
        """A hashed field's bytes."""
        raw = getattr(self, name)
        if isinstance(raw, bytes):
            return raw
        return str(raw).encode("utf-8")

    def chained(self, seq: int, prev: str, time_ms: int, hub: str) -> Entry:
        """This entry at position ``seq`` after an entry whose hash is ``prev``."""
        texts = self._texts(seq, prev, time_ms, hub)
        return Entry(
            kind=self.kind,
            action=self.action,
            outcome=self.outcome,
            principal=self.principal,
            command_id=self.command_id,
            audience=self.audience,
            agent=self.agent,
            spoke=self.spoke,
            detail=self.detail,
            request=self.request,
            replies=self.replies,
            hub=hub,
            time_ms=time_ms,
            seq=seq,
            prev=prev,
            hash=_hash_of(texts, self.request, self.replies),
        )

    def _texts(self, seq: int, prev: str, time_ms: int, hub: str) -> tuple[str, ...]:
        """The text fields of FIELDS, in order, as this entry chained so would hold them."""
        return (
            str(seq),
            str(time_ms),
            hub,
            self.kind,
            self.action,
            self.outcome,
            self.principal,
            self.command_id,
            self.audience,
            self.agent,
            self.spoke,
            self.detail,
            prev,
        )

    def to_fields(self) -> dict[str, str]:
        """The Redis stream fields of a chained entry."""
        flat = self.to_flat()
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def to_flat(self) -> list[str]:
        """:meth:`to_fields` as a flat list of names and values, in FIELDS order, then hash."""
        t = self._texts(self.seq, self.prev, self.time_ms, self.hub)
        return [
            *(x for pair in zip(_TEXT_HEAD, t[:12], strict=True) for x in pair),
            "request",
            base64.b64encode(self.request).decode(),
            "replies",
            base64.b64encode(self.replies).decode(),
            "prev",
            t[12],
            "hash",
            self.hash,
        ]

    def to_pb(self) -> audit_pb2.AuditEntry:
        return audit_pb2.AuditEntry(
            seq=self.seq,
            time=to_timestamp(from_epoch_ms(self.time_ms)),
            kind=self.kind,
            action=self.action,
            outcome=self.outcome,
            principal=self.principal,
            command_id=self.command_id,
            audience=self.audience,
            agent=self.agent,
            spoke=self.spoke,
            detail=self.detail,
            request=self.request,
            replies=split_replies(self.replies) if self.replies else [],
            hub=self.hub,
            prev_hash=self.prev,
            hash=self.hash,
        )


def entry_hash(entry: Entry) -> str:
    """The SHA-256 (hex) of an entry's FIELDS (module docstring)."""
    texts = entry._texts(entry.seq, entry.prev, entry.time_ms, entry.hub)
    return _hash_of(texts, entry.request, entry.replies)


_TEXT_HEAD = FIELDS[:12]
"""The text fields before ``request`` and ``replies`` (``prev`` follows them)."""
_NAMED = {n: struct.pack(">I", len(n)) + n.encode() for n in FIELDS}
"""Each field's name as hashed: its 4-byte length and its bytes."""
_LEN = struct.Struct(">I").pack

if FIELDS[12:] != ("request", "replies", "prev") or set(_TEXT_HEAD) & _BYTES_FIELDS:
    raise AssertionError("hub/audit_chain.py: _hash_of and to_flat follow FIELDS' order")


def _hash_of(texts: Sequence[str], request: bytes, replies: bytes) -> str:
    """SHA-256 over DOMAIN and each field's name and value (module docstring): ``texts`` the
    text fields in FIELDS order (Entry._texts), then the two bytes fields before ``prev``."""
    parts = [DOMAIN]
    for name, text in zip(_TEXT_HEAD, texts, strict=False):
        value = text.encode()
        parts += (_NAMED[name], _LEN(len(value)), value)
    parts += (_NAMED["request"], _LEN(len(request)), request)
    parts += (_NAMED["replies"], _LEN(len(replies)), replies)
    prev = texts[12].encode()
    parts += (_NAMED["prev"], _LEN(len(prev)), prev)
    return hashlib.sha256(b"".join(parts)).hexdigest()


def from_fields(fields: Mapping[str, str]) -> Entry:
    """An entry as stored in Redis (ValueError if a field is missing or malformed)."""
    missing = [n for n in (*FIELDS, "hash") if n not in fields]
    if missing:
        raise ValueError(f"missing field {missing[0]}")
    values: dict[str, object] = {}
    for n in FIELDS:
        text = fields[n]
        if n in _BYTES_FIELDS:
            values[n] = base64.b64decode(text, validate=True)
        elif n in ("seq", "time_ms"):
            values[n] = int(text)
        else:
            values[n] = text
    return Entry(**values, hash=fields["hash"])  # type: ignore[arg-type]
