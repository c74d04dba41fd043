"""ReadAuditLog: who did what to which agent, as the hub's audit log recorded it.

Reading the log is the policy verb ``audit``, answered by the hub. A principal whose rules
for it are all of scope ``own`` sees only entries it is the principal of; an ``any`` rule
sees every entry. The page is signed by the hub like every reply it produces.
"""

from __future__ import annotations

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import audit_pb2, command_pb2
from hubspoke.keys import SigningKey
from hubspoke.policy import Policy, Request

from .audit import AuditLog
from .relay import Inbound

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "read_page"]

DEFAULT_PAGE = 50
MAX_PAGE = 500
_ROOM = 4096
"""Room under the message limit for the reply's own fields and signature."""


async def read_page(
    inbound: Inbound,
    audit: AuditLog | None,
    policy: Policy,
    hub: str,
    key: SigningKey,
    max_bytes: int,
) -> command_pb2.SignedEnvelope:
    """The hub-signed page of entries ``inbound`` (a read_audit_log command) asks for,
    no larger than ``max_bytes`` (the rest is on the next page)."""
    cmd = inbound.command
    if cmd.audience != hub:
        raise errors.InvalidCommandError(
            f"read_audit_log is answered by the hub: set the audience to {hub}"
        )
    if audit is None:
        raise errors.CommandError("the audit log is off on this hub (audit_enabled = false)")
    ask = Request(principal=cmd.issuer, verb="audit", spoke=None)
    policy.check(ask)  # PERMISSION_DENIED unless some rule lets the caller read it
    sees_all = any(
        r.scope == "any" and r.covers(cmd.issuer, "audit", None, {}) for r in policy.rules
    )
    body = cmd.read_audit_log
    if body.page_size < 0 or body.before_seq < 0:
        raise errors.InvalidCommandError("page_size and before_seq must not be negative")
    principal = body.principal if sees_all else cmd.issuer
    if body.principal and body.principal != principal:
        raise errors.InvalidCommandError(
            f"{cmd.issuer} may read only its own audit entries: principal must be {cmd.issuer}"
        )
    size = min(body.page_size or DEFAULT_PAGE, MAX_PAGE)
    entries, next_before = await audit.newest(
        size, before_seq=body.before_seq, agent=body.agent, principal=principal
    )
    page = audit_pb2.AuditPage(next_before_seq=next_before)
    room = max_bytes - _ROOM
    for entry in entries:
        pb = entry.to_pb()
        room -= pb.ByteSize() + 8
        if room < 0 and page.entries:
            page.next_before_seq = page.entries[-1].seq
            break
        page.entries.append(pb)
    reply = command_pb2.Reply(
        command_id=cmd.command_id,
        responder=hub,
        request_digest=inbound.digest,
        issue_time=commands.to_timestamp(commands.now()),
        audit_page=page,
    )
    return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)
