"""The hub's outbox as the client API returns it (``Client.outbox``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hubspoke.gen.federation.v1 import outbox_pb2

from ._types import _time

__all__ = ["OutboxItem", "OutboxList"]


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A command the hub holds for a spoke it could not reach."""

    spoke: str
    command_id: str
    kind: str
    """``spawn`` (its agent is PENDING_DELIVERY) or ``kill`` (delivered first)."""
    principal: str
    agent: str
    accept_time: dt.datetime | None
    start_deadline: dt.datetime | None
    attempts: int
    next_attempt_time: dt.datetime | None
    last_error: str

    @classmethod
    def from_proto(cls, e: outbox_pb2.OutboxEntry) -> OutboxItem:
        return cls(
            spoke=e.spoke,
            command_id=e.command_id,
            kind=e.kind,
            principal=e.principal,
            agent=e.agent,
            accept_time=_time(e.accept_time, e.HasField("accept_time")),
            start_deadline=_time(e.start_deadline, e.HasField("start_deadline")),
            attempts=e.attempts,
            next_attempt_time=_time(e.next_attempt_time, e.HasField("next_attempt_time")),
            last_error=e.last_error,
        )


@dataclass(frozen=True, slots=True)
class OutboxList:
    """Entries (kills first), and how many the hub holds in all for what was asked."""

    items: tuple[OutboxItem, ...]
    total: int
