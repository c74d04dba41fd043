"""ListOutbox (``hubctl outbox list``) and the outbox columns of ListSpokes.

Reading the outbox is the policy verb ``outbox``, answered by the hub: an ``any`` rule sees
every entry, an ``own`` rule only the caller's own. The page is signed by the hub.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2, outbox_pb2
from hubspoke.keys import SigningKey
from hubspoke.policy import Policy, Request

from .outbox import Held, Outbox
from .relay import Inbound

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "annotate_spokes", "read_page"]

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def _ts(ms: int) -> timestamp_pb2.Timestamp:
    return commands.to_timestamp(commands.from_epoch_ms(ms))


def entry_pb(held: Held) -> outbox_pb2.OutboxEntry:
    entry = outbox_pb2.OutboxEntry(
        spoke=held.spoke,
        command_id=held.command_id,
        kind=held.kind,
        principal=held.principal,
        agent=held.agent,
        attempts=held.attempts,
        last_error=held.last_error,
    )
    entry.accept_time.CopyFrom(_ts(held.accepted_ms))
    entry.start_deadline.CopyFrom(_ts(held.deadline_ms))
    if held.next_ms:
        entry.next_attempt_time.CopyFrom(_ts(held.next_ms))
    return entry


async def read_page(
    inbound: Inbound,
    outbox: Outbox | None,
    policy: Policy,
    hub: str,
    key: SigningKey,
    spokes: list[str],
) -> command_pb2.SignedEnvelope:
    """The hub-signed page ``inbound`` (a list_outbox command) asks for."""
    cmd = inbound.command
    if cmd.audience != hub:
        raise errors.InvalidCommandError(
            f"list_outbox is answered by the hub: set the audience to {hub}"
        )
    if outbox is None:
        raise errors.CommandError("the outbox is off on this hub (outbox_enabled = false)")
    body = cmd.list_outbox
    if body.page_size < 0:
        raise errors.InvalidCommandError("page_size must not be negative")
    policy.check(Request(principal=cmd.issuer, verb="outbox", spoke=body.spoke or None))
    sees_all = any(
        r.scope == "any" and r.covers(cmd.issuer, "outbox", body.spoke or None, {})
        for r in policy.rules
    )
    size = min(body.page_size or DEFAULT_PAGE, MAX_PAGE)
    names = [body.spoke] if body.spoke else sorted(set(spokes) | set(await outbox.spokes()))
    page = outbox_pb2.OutboxPage()
    for spoke in names:
        for held in await outbox.entries(spoke, size):
            if not sees_all and held.principal != cmd.issuer:
                continue
            if len(page.entries) < size:
                page.entries.append(entry_pb(held))
            page.total += 1
    reply = command_pb2.Reply(
        command_id=cmd.command_id,
        responder=hub,
        request_digest=inbound.digest,
        issue_time=commands.to_timestamp(commands.now()),
        outbox_page=page,
    )
    return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)


async def annotate_spokes(outbox: Outbox, spokes: list[command_pb2.Spoke]) -> None:
    """Set each spoke's outbox depth and oldest entry (one Redis round trip); a Redis that
    does not answer leaves them unset."""
    try:
        depths = await outbox.depths([s.name for s in spokes])
    except errors.BackendUnavailableError:
        return
    for spoke in spokes:
        count, oldest = depths.get(spoke.name, (0, 0))
        spoke.outbox_depth = count
        if oldest:
            spoke.oldest_outbox_time.CopyFrom(_ts(oldest))
