"""The hub's audit log as the client API returns it (``Client.audit_log``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hubspoke.gen.federation.v1 import audit_pb2

__all__ = ["AuditPage", "AuditRecord"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry of the hub's hash-chained audit log (docs/security.md, "Audit log")."""

    seq: int
    time: dt.datetime
    kind: str
    """``command`` (a client's call and its outcome) or ``decision`` (the hub's own)."""
    action: str
    """The RPC, or the decision (e.g. ``circuit_open``)."""
    outcome: str
    """``OK``, or the status code and reason of a refusal."""
    principal: str
    command_id: str
    audience: str
    agent: str
    spoke: str
    detail: str
    hub: str
    hash: str
    prev_hash: str
    request: bytes
    """The client's SignedEnvelope as the hub received it (empty if not kept)."""
    replies: tuple[bytes, ...]

    @classmethod
    def from_proto(cls, e: audit_pb2.AuditEntry) -> AuditRecord:
        return cls(
            seq=e.seq,
            time=e.time.ToDatetime(dt.UTC),
            kind=e.kind,
            action=e.action,
            outcome=e.outcome,
            principal=e.principal,
            command_id=e.command_id,
            audience=e.audience,
            agent=e.agent,
            spoke=e.spoke,
            detail=e.detail,
            hub=e.hub,
            hash=e.hash,
            prev_hash=e.prev_hash,
            request=e.request,
            replies=tuple(e.replies),
        )


@dataclass(frozen=True, slots=True)
class AuditPage:
    """Entries newest first, and where the next (older) page starts (0: none)."""

    records: tuple[AuditRecord, ...]
    next_before_seq: int
