"""Feed items (spoke/feed.py) as the wire's ``FeedEntry``."""

from __future__ import annotations

from hubspoke.gen.federation.v1 import agent_pb2, command_pb2

from .feed import FeedItem

_KINDS = {
    "event": command_pb2.FeedEntry.Kind.KIND_EVENT,
    "heartbeat": command_pb2.FeedEntry.Kind.KIND_HEARTBEAT,
    "gap": command_pb2.FeedEntry.Kind.KIND_GAP,
}


def to_feed_entry(spoke: str, item: FeedItem) -> command_pb2.FeedEntry:
    out = command_pb2.FeedEntry(
        kind=_KINDS[item.kind], spoke=spoke, cursor=item.cursor, detail=item.detail
    )
    if item.kind == "event":
        out.owner = item.owner
        event = out.event
        event.agent_id = item.agent_id
        event.sequence = item.seq
        event.kind = agent_pb2.AgentEvent.Kind.KIND_STATE
        event.reason = item.reason
        event.event_time.FromMilliseconds(item.time_ms)
        if item.state:
            event.state = agent_pb2.Agent.State.Value(f"STATE_{item.state}")
    return out
