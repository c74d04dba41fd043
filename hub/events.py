"""The hub's event feed: one WatchEvents stream fanned in from many spokes' feeds.

Each spoke gets the client's command in a Relay of its own and streams its feed entries, each
a Reply the spoke signed; the hub verifies each (signed by that spoke, answering this command,
a feed_entry) and passes it on intact, interleaved with the other spokes' as they arrive. The
cursor is per spoke (FeedEntry.cursor with FeedEntry.spoke), so the client's resume token is
the map of each spoke's last cursor (WatchEventsBody.after), and the order within one spoke is
the spoke's. A spoke that cannot be reached, or whose stream fails, is named in a feed entry
of kind KIND_UNREACHABLE that the hub signs itself (detail: why); the other spokes' entries go
on. The stream ends when every spoke's has (without ``follow``, once each sent what it keeps).
With one spoke as the audience there is no fan-in: its failure is the call's error, as for
WatchAgent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import structlog

from hubspoke import commands, envelope, errors
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.keys import SigningKey

from .relay import Inbound, Relayer

log = structlog.get_logger("hubspoke.hub.events")

FAN_IN_BUFFER = 256
"""Entries the hub holds between the spokes' streams and the client's (then it stops reading)."""

FEED_SILENCE_S = 30.0
"""How long a following spoke may send nothing before the hub gives up on it (it sends a
heartbeat every watch_heartbeat_s, 5 s by default); without follow, the hub's
fanout_timeout_s."""

_DONE = object()


async def _spoke_feed(
    relayer: Relayer, inbound: Inbound, spoke: str, timeout_s: float, silence_s: float
) -> AsyncIterator[command_pb2.SignedEnvelope]:
    """One spoke's verified entries; SpokeUnavailableError once it is silent ``silence_s``
    (a stopped process keeps its connection open, so the call alone would wait its deadline)."""
    stream = relayer.feed(spoke, inbound, timeout_s)
    async with contextlib.aclosing(stream):  # type: ignore[type-var]  # an async generator
        while True:
            try:
                async with asyncio.timeout(silence_s):
                    reply_env, _ = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise errors.SpokeUnavailableError(
                    f"spoke {spoke} sent nothing for {silence_s:g} s", spoke=spoke
                ) from None
            yield reply_env


async def fan_in(
    relayer: Relayer,
    inbound: Inbound,
    spokes: Sequence[str],
    timeout_s: float,
    hub: str,
    key: SigningKey,
    *,
    idle_s: float,
) -> AsyncIterator[command_pb2.SignedEnvelope]:
    """Every spoke's signed feed entries as they arrive, and the hub's own for a spoke that
    failed; ends once every spoke's stream has. With a spoke as the command's audience there
    is no fan-in: that spoke's entries, and its failure as the call's own error."""
    live = inbound.command.watch_events.follow
    silence = max(idle_s, FEED_SILENCE_S) if live else idle_s
    if inbound.command.audience != hub:
        async for reply_env in _spoke_feed(relayer, inbound, spokes[0], timeout_s, silence):
            yield reply_env
        return
    queue: asyncio.Queue[command_pb2.SignedEnvelope | object] = asyncio.Queue(FAN_IN_BUFFER)

    async def pump(spoke: str) -> None:
        try:
            async for reply_env in _spoke_feed(relayer, inbound, spoke, timeout_s, silence):
                await queue.put(reply_env)
        except errors.CommandError as exc:
            log.info("feed_spoke_failed", spoke=spoke, reason=exc.reason)
            await queue.put(_unreachable(inbound, hub, key, spoke, exc.message))
        except Exception:  # named to the client, never a silent end of this spoke's part
            log.exception("feed_spoke_crashed", spoke=spoke)
            await queue.put(_unreachable(inbound, hub, key, spoke, "the hub's relay failed"))
        await queue.put(_DONE)  # not on cancellation: the reader is gone then

    tasks = [asyncio.create_task(pump(s), name=f"feed-{s}") for s in spokes]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, command_pb2.SignedEnvelope):
                yield item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _unreachable(
    inbound: Inbound, hub: str, key: SigningKey, spoke: str, why: str
) -> command_pb2.SignedEnvelope:
    reply = command_pb2.Reply(
        command_id=inbound.command.command_id,
        responder=hub,
        request_digest=inbound.digest,
        issue_time=commands.to_timestamp(commands.now()),
        feed_entry=command_pb2.FeedEntry(
            kind=command_pb2.FeedEntry.Kind.KIND_UNREACHABLE, spoke=spoke, detail=why
        ),
    )
    return envelope.sign(reply.SerializeToString(), envelope.PAYLOAD_TYPE_REPLY, key)
