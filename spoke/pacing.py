"""The spoke's watch pacing: how an agent's events are treated when a stream is over its rate.

State changes are urgent (never merged or dropped, so the final state always arrives),
progress keeps only the newest report, output chunks of one stream are merged into the chunk
waiting before them (up to ``MAX_MERGED_CHARS``), dropped-byte counts are added up, and a
heartbeat is dropped when anything else waits (``hubspoke.pacing``). The merged event has
the sequence number and time of the last event it stands for, so a watcher that resumes
after it misses nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator

from hubspoke.pacing import Pacer, PacingConfig, Treatment, paced

from .config import SpokeConfig
from .model import AgentEvent

__all__ = ["MAX_MERGED_CHARS", "merge_events", "paced_events", "pacing_config", "treatment"]

MAX_MERGED_CHARS = 64 * 1024
"""The longest output text one merged event carries; more waits in a next event."""

_TREATMENTS = {
    "state": Treatment.URGENT,
    "progress": Treatment.LATEST,
    "heartbeat": Treatment.IDLE,
}


def pacing_config(config: SpokeConfig) -> PacingConfig:
    """The spoke's ``watch_event_*`` values."""
    return PacingConfig(
        rate=config.watch_event_rate,
        burst=config.watch_event_burst,
        rate_per_principal=config.watch_event_rate_per_principal,
        burst_per_principal=config.watch_event_burst_per_principal,
    )


def treatment(event: AgentEvent) -> Treatment:
    """State changes urgent, progress latest-only, heartbeats idle, the rest ordered."""
    return _TREATMENTS.get(event.kind, Treatment.ORDERED)


def merge_events(earlier: AgentEvent, later: AgentEvent) -> AgentEvent | None:
    """One event standing for two waiting ones of the same output stream (or two dropped
    counts), or None when they must stay apart."""
    if earlier.kind != later.kind:
        return None
    if later.kind in ("stdout", "stderr"):
        if len(earlier.data) + len(later.data) > MAX_MERGED_CHARS:
            return None
        data = earlier.data + later.data
    elif later.kind == "dropped" and earlier.data.isdigit() and later.data.isdigit():
        data = str(int(earlier.data) + int(later.data))
    else:
        return None
    return dataclasses.replace(later, data=data)


def paced_events(
    events: AsyncIterator[AgentEvent], pacer: Pacer
) -> AsyncGenerator[AgentEvent, None]:
    """``events`` (an agent's follow) at the pacer's rate, coalesced."""
    return paced(events, pacer, treatment, merge_events)
