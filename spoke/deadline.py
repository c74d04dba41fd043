"""A spawn's start deadline: its acceptance time plus ``start_within``.

Two clocks per spawn, never confused (docs/protocol.md §3.4):

* the **signature window** (``issue_time``/``expire_time``, minutes) only guards against
  replay: the command must be *accepted* inside it;
* the **start deadline** (acceptance + ``start_within``, 24 h unless the spawn or its profile
  says otherwise) is how long the accepted work may wait to start.

The acceptance time is the hub's, signed in its Relay (``accept_time``), for a relayed
spawn, and the spoke's own receive time for a direct one. A spawn's ``delay`` counts from
the same anchor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import duration_pb2

from hubspoke import errors
from hubspoke.gen.federation.v1 import command_pb2

from .config import SpokeConfig
from .profiles import Profile

__all__ = ["Deadlines", "StartWithin", "start_within"]


@dataclass(frozen=True, slots=True)
class StartWithin:
    """How a spoke resolves a spawn's ``start_within``."""

    default_s: float = 86_400.0
    """When neither the spawn nor its profile names one (``default_start_within_s``)."""
    max_s: float = 7 * 86_400.0
    """The longest a spawn may ask for (``max_start_within_s``)."""
    profiles: Mapping[str, Profile] | None = None
    """The spoke's profiles, whose ``start_within_s`` is the default for their spawns."""


def _duration(d: duration_pb2.Duration) -> dt.timedelta:
    if d.seconds < 0 or not 0 <= d.nanos < 1_000_000_000:
        raise errors.InvalidCommandError("start_within must not be negative")
    return dt.timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def start_within(body: command_pb2.SpawnAgentBody, rule: StartWithin) -> dt.timedelta:
    """The spawn's own ``start_within``, else its profile's, else the spoke's default.

    Raises:
        InvalidCommandError: negative, or longer than the spoke's ``max_start_within_s``.
    """
    asked = _duration(body.start_within)
    if asked > dt.timedelta(seconds=rule.max_s):
        raise errors.InvalidCommandError(
            f"start_within must be at most {rule.max_s:g} s on this spoke (max_start_within_s)",
            limit="max_start_within_s",
        )
    if asked:
        return asked
    profile = (rule.profiles or {}).get(body.profile)
    if profile is not None and profile.start_within_s:
        return dt.timedelta(seconds=min(profile.start_within_s, rule.max_s))
    return dt.timedelta(seconds=min(rule.default_s, rule.max_s))


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How a spoke judges a command's acceptance time and a spawn's start deadline."""

    start_within: StartWithin = StartWithin()
    max_relay_age: dt.timedelta = dt.timedelta(days=7)
    """The oldest Relay.accept_time accepted (``max_relay_age_s``): however long a spawn
    may wait to start, no relay accepted longer ago than this is taken."""

    @classmethod
    def of(cls, cfg: SpokeConfig) -> Deadlines:
        """The rules a spoke's config names."""
        return cls(
            StartWithin(cfg.default_start_within_s, cfg.max_start_within_s, cfg.profiles),
            dt.timedelta(seconds=cfg.max_relay_age_s),
        )
