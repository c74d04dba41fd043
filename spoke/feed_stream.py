"""One WatchEvents stream: its body checked, the feed followed and filtered, as wire entries."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from hubspoke import errors
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2

from .feed import Feed, FeedItem
from .feed_wire import to_feed_entry


def states_of(body: command_pb2.WatchEventsBody) -> frozenset[str]:
    """The body's state filter as state names (empty: every state)."""
    return frozenset(agent_pb2.Agent.State.Name(s).removeprefix("STATE_") for s in body.states if s)


async def items(
    feed: Feed,
    body: command_pb2.WatchEventsBody,
    spoke: str,
    owner: str | None,
    heartbeat_s: float,
) -> AsyncGenerator[command_pb2.FeedEntry, None]:
    """The entries to send: this spoke's cursor from ``body.after`` (absent: from the oldest
    kept), only events of ``owner``'s agents (None: every agent) in the body's states."""
    if any(v < 0 for v in body.after.values()):
        raise errors.InvalidCommandError("a feed cursor must not be negative")
    for s in body.states:
        if s not in agent_pb2.Agent.State.values() or s == 0:
            raise errors.InvalidCommandError(f"unknown state {s} in the feed's filter")
    wanted = states_of(body)

    def keep(item: FeedItem) -> bool:
        return (not wanted or item.state in wanted) and (owner is None or item.owner == owner)

    followed = feed.follow(
        body.after.get(spoke, 0), live=body.follow, heartbeat_s=heartbeat_s, keep=keep
    )
    try:
        async for item in followed:
            yield to_feed_entry(spoke, item)
    finally:
        await followed.aclose()
