"""The event feed as the client reads it: ``Client.events`` (docs/protocol.md, the feed).

Every entry is verified before it is yielded: signed by a spoke about its own feed (by the
spoke asked for, when one was), or by the hub for a spoke it could not reach; bound to the
command sent; and, per spoke, with a cursor past the last one seen (no entry twice). The
client keeps each spoke's last cursor; :attr:`FeedEvent.token` is the resume token after
that entry (``spoke=cursor,...``), which ``events(since=...)`` and ``hubctl events --since``
take back. A dropped stream (UNAVAILABLE) is signed again from the cursors reached and
resumed, so the caller sees neither a gap nor a repeat.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import grpc

from hubspoke import commands, envelope, errors, version
from hubspoke import grpc as sgrpc
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, hub_service_pb2
from hubspoke.trust import Role

from ._errors import CallError
from ._types import AgentState

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["FeedEvent", "FeedKind", "format_token", "parse_token"]

_ATTEMPTS: Final = 3
_BACKOFF_S: Final = (0.2, 0.4)


class FeedKind(enum.IntEnum):
    """What a feed entry is (FeedEntry.Kind)."""

    UNSPECIFIED = command_pb2.FeedEntry.KIND_UNSPECIFIED
    EVENT = command_pb2.FeedEntry.KIND_EVENT
    """A state change."""
    HEARTBEAT = command_pb2.FeedEntry.KIND_HEARTBEAT
    """Nothing new on that spoke; its cursor is where it stands."""
    GAP = command_pb2.FeedEntry.KIND_GAP
    """Entries after the cursor are no longer kept (``detail`` says which)."""
    UNREACHABLE = command_pb2.FeedEntry.KIND_UNREACHABLE
    """The hub could not reach that spoke (``detail`` says why); its entries stop."""


_KINDS: Final = frozenset(int(k) for k in FeedKind)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One verified feed entry."""

    kind: FeedKind
    spoke: str
    cursor: int
    """The spoke's feed position of this entry (0 for UNREACHABLE)."""
    agent_id: str
    state: AgentState
    reason: str
    owner: str
    sequence: int
    """The state change's sequence number in the agent's own event stream."""
    event_time: dt.datetime | None
    detail: str
    token: str
    """The resume token after this entry: every spoke's last cursor seen so far."""
    raw: command_pb2.FeedEntry = field(repr=False, compare=False)


def parse_token(token: str) -> dict[str, int]:
    """``spoke=cursor,...`` as a map; ValueError (one line) if it is not one."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in token.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name or not value.isdigit() or len(value) > 18:
            raise ValueError(f"not a feed cursor: {part!r} (want spoke=N,...)")
        out[name] = int(value)
    return out


def format_token(cursors: Mapping[str, int]) -> str:
    return ",".join(f"{name}={cursors[name]}" for name in sorted(cursors))


def _state_values(
    states: Collection[AgentState | str],
) -> list[agent_pb2.Agent.State.ValueType]:
    out: list[agent_pb2.Agent.State.ValueType] = []
    for s in states:
        if isinstance(s, AgentState):
            out.append(agent_pb2.Agent.State.ValueType(int(s)))
            continue
        try:
            out.append(agent_pb2.Agent.State.ValueType(int(AgentState[s.upper()])))
        except KeyError:
            raise ValueError(f"unknown state {s!r}") from None
    return out


async def follow(
    client: Client,
    *,
    spoke: str | None,
    states: Collection[AgentState | str],
    since: str | Mapping[str, int] | None,
    live: bool,
    max_s: float,
) -> AsyncGenerator[FeedEvent, None]:
    """``Client.events``: see the module docstring."""
    cursors = dict(parse_token(since) if isinstance(since, str) else (since or {}))
    wanted = _state_values(states)
    for attempt in range(_ATTEMPTS):
        cmd = client._command(spoke or client.hub_name, commands.new_command_id())
        cmd.watch_events.SetInParent()
        cmd.watch_events.after.update(cursors)
        cmd.watch_events.states.extend(wanted)
        cmd.watch_events.follow = live
        signed = commands.sign_command(cmd, client._key)
        call = client._open().WatchEvents(
            hub_service_pb2.HubServiceWatchEventsRequest(command=signed),
            timeout=max_s,
            metadata=version.CALL_METADATA,
        )
        try:
            async for resp in call:
                entry = _verified(client, cmd, signed, resp.reply, spoke)
                if entry.kind == command_pb2.FeedEntry.KIND_UNREACHABLE:
                    pass
                elif entry.kind == command_pb2.FeedEntry.KIND_EVENT:
                    if entry.cursor <= cursors.get(entry.spoke, 0):
                        raise CallError.invalid_reply(
                            f"spoke {entry.spoke} repeated feed entry {entry.cursor}"
                        )
                    cursors[entry.spoke] = entry.cursor
                else:  # a heartbeat says where the spoke stands; a gap moves the cursor
                    cursors[entry.spoke] = entry.cursor
                yield _event(entry, format_token(cursors))
        except grpc.aio.AioRpcError as exc:
            failure = sgrpc.from_rpc_error(exc)
            retry = failure.code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < _ATTEMPTS
            if not retry:
                raise CallError.from_failure(failure) from exc
        else:
            return
        finally:
            call.cancel()
        await asyncio.sleep(_BACKOFF_S[attempt])


def _verified(
    client: Client,
    cmd: command_pb2.Command,
    signed: command_pb2.SignedEnvelope,
    reply_env: command_pb2.SignedEnvelope,
    spoke: str | None,
) -> command_pb2.FeedEntry:
    try:
        verified = envelope.verify(
            reply_env,
            payload_type=envelope.PAYLOAD_TYPE_REPLY,
            trust=client._trust,
            roles={Role.SPOKE, Role.HUB},
        )
        reply = commands.parse_reply(verified.payload)
    except errors.CommandError as exc:
        raise CallError.invalid_reply(f"reply failed verification: {exc.message}") from exc
    if reply.responder != verified.peer:
        raise CallError.invalid_reply("reply's responder is not its signer")
    if reply.command_id != cmd.command_id or reply.request_digest != commands.digest(
        signed.payload
    ):
        raise CallError.invalid_reply("reply does not answer the command sent")
    if reply.WhichOneof("result") != "feed_entry":
        raise CallError.invalid_reply("reply carries no feed_entry")
    entry = reply.feed_entry
    if entry.kind == command_pb2.FeedEntry.KIND_UNREACHABLE:
        if verified.peer != client.hub_name:
            raise CallError.invalid_reply(
                f"{verified.peer} is not the hub: it cannot say a spoke is unreachable"
            )
    elif entry.spoke != verified.peer:
        raise CallError.invalid_reply(
            f"feed entry of spoke {entry.spoke!r} is signed by {verified.peer}"
        )
    if spoke is not None and entry.spoke != spoke:
        raise CallError.invalid_reply(f"asked for spoke {spoke}'s feed, got {entry.spoke!r}'s")
    return entry


def _event(entry: command_pb2.FeedEntry, token: str) -> FeedEvent:
    ev: agent_pb2.AgentEvent = entry.event
    try:
        state = AgentState(ev.state)
    except ValueError:
        state = AgentState.UNSPECIFIED
    return FeedEvent(
        kind=FeedKind(entry.kind) if int(entry.kind) in _KINDS else FeedKind.UNSPECIFIED,
        spoke=entry.spoke,
        cursor=entry.cursor,
        agent_id=ev.agent_id,
        state=state,
        reason=ev.reason,
        owner=entry.owner,
        sequence=ev.sequence,
        event_time=ev.event_time.ToDatetime(dt.UTC) if ev.HasField("event_time") else None,
        detail=entry.detail,
        token=token,
        raw=entry,
    )
