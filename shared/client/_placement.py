"""A spawn's placement decision as the client returns it (``Client.plan_spawn``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from hubspoke.gen.federation.v1 import command_pb2

__all__ = ["Placement", "PlacementCandidate", "spawn_body"]


@dataclass(frozen=True, slots=True)
class PlacementCandidate:
    """One spoke considered, and why it was or was not chosen."""

    spoke: str
    chosen: bool
    reason: str
    load: int
    """Running + queued agents at its last status, plus placements since."""
    capacity: int
    """Its size for the profile (max_concurrency; 1 when unlimited)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a spawn would go (a dry run changes nothing) and why; signed by ``signer``."""

    spoke: str
    """The chosen spoke; empty when none fits (``reason`` says what is missing)."""
    reason: str
    candidates: tuple[PlacementCandidate, ...]
    claimed: bool
    """The command id was already placed on ``spoke``: a real spawn goes there again."""
    signer: str
    """The hub (selector) or the spoke (named spoke) that signed the answer."""
    raw: command_pb2.Placement

    @classmethod
    def from_proto(cls, msg: command_pb2.Placement, signer: str) -> Placement:
        return cls(
            spoke=msg.spoke,
            reason=msg.reason,
            candidates=tuple(
                PlacementCandidate(c.spoke, c.chosen, c.reason, c.load, c.capacity)
                for c in msg.candidates
            ),
            claimed=msg.claimed,
            signer=signer,
            raw=msg,
        )


def spawn_body(
    profile: str,
    task: str,
    *,
    priority: int = 0,
    timeout_s: float | None = None,
    labels: Mapping[str, str] | None = None,
    max_attempts: int = 0,
    delay_s: float | None = None,
    start_within_s: float | None = None,
    selector: Mapping[str, str] | None = None,
    dry_run: bool = False,
) -> command_pb2.SpawnAgentBody:
    """A SpawnAgentBody from the client's arguments (durations in seconds)."""
    body = command_pb2.SpawnAgentBody(
        profile=profile,
        task=task,
        priority=priority,
        labels=dict(labels or {}),
        max_attempts=max_attempts,
        selector=dict(selector or {}),
        dry_run=dry_run,
    )
    for field, value in (
        (body.timeout, timeout_s),
        (body.delay, delay_s),
        (body.start_within, start_within_s),
    ):
        if value is not None:
            field.FromTimedelta(dt.timedelta(seconds=value))
    return body
