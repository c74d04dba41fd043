"""What the pages show, read through :class:`hubspoke.client.Client` (the console's only way
to the federation): spokes with their queues, agent pages merged across spokes, cursors.

A spoke that fails to answer is shown with its error; it never fails the whole page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from hubspoke.client import (
    Agent,
    AgentList,
    AgentState,
    CallError,
    Client,
    QueueStats,
    Spoke,
    SpokeHealth,
)

__all__ = [
    "ATTENTION_STATES",
    "AgentRows",
    "CursorError",
    "FederationView",
    "SpokeRow",
    "agents_page",
    "decode_cursor",
    "encode_cursor",
    "federation",
]

STATS_TIMEOUT_S: Final = 5.0
ATTENTION_STATES: Final = (
    AgentState.FAILED,
    AgentState.DEAD_LETTERED,
    AgentState.TIMED_OUT,
    AgentState.EXPIRED,
    AgentState.NEEDS_INPUT,
    AgentState.NEEDS_VERIFICATION,
    AgentState.AWAITING_APPROVAL,
    AgentState.REJECTED,
)
"""States that ask for the operator's eye (final ones, and those waiting on a person)."""
_EPOCH: Final = dt.datetime.min.replace(tzinfo=dt.UTC)


class CursorError(ValueError):
    """A ``cursor`` parameter that this console did not write."""


@dataclass(frozen=True, slots=True)
class SpokeRow:
    """One spoke and its queue, or why its queue could not be read."""

    spoke: Spoke
    stats: QueueStats | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class FederationView:
    """Everything the federation page shows."""

    spokes: tuple[SpokeRow, ...]
    attention: tuple[Agent, ...]
    """Failed, dead-lettered and timed-out agents, and recent ones whose receipt is blocked."""
    recent: tuple[Agent, ...]
    unreachable: tuple[str, ...]
    errors: tuple[str, ...] = ()
    """Why a listing of agents failed (the page shows the rest)."""

    @property
    def ready(self) -> int:
        return sum(1 for r in self.spokes if r.spoke.health == SpokeHealth.READY)

    def total(self, field: str) -> int:
        """The sum of one queue count over the spokes that answered."""
        return sum(int(getattr(r.stats, field)) for r in self.spokes if r.stats is not None)

    @property
    def paused(self) -> int:
        return sum(1 for r in self.spokes if r.stats is not None and r.stats.paused)


@dataclass(frozen=True, slots=True)
class AgentRows:
    """One page of agents across spokes, newest first."""

    agents: tuple[Agent, ...]
    unreachable: tuple[str, ...]
    next_cursor: str
    """Pass it back for the next page; "" on the last."""


_ANSWERING: Final = frozenset({SpokeHealth.READY, SpokeHealth.DEGRADED, SpokeHealth.DRAINING})
"""Spokes whose queue is worth reading (a DEGRADED one may just be paused)."""


async def _stats(client: Client, spoke: Spoke) -> SpokeRow:
    if spoke.health not in _ANSWERING:
        return SpokeRow(spoke, None, spoke.health.name.lower())
    try:
        async with asyncio.timeout(STATS_TIMEOUT_S):
            return SpokeRow(spoke, await client.queue_stats(spoke.name))
    except CallError as exc:
        return SpokeRow(spoke, None, str(exc))
    except TimeoutError:
        return SpokeRow(spoke, None, f"no answer in {STATS_TIMEOUT_S:g}s")


async def _listing(client: Client, size: int, states: Collection[AgentState]) -> AgentList | str:
    try:
        return await client.list(None, size, states)
    except CallError as exc:
        return str(exc)


async def federation(client: Client) -> FederationView:
    """The spokes with their queues, what needs attention, and the latest agents.

    Raises:
        CallError: the hub did not list its spokes (a failed listing of agents is shown in
            :attr:`FederationView.errors` instead).
    """
    spokes = await client.spokes()
    rows, failed, recent = await asyncio.gather(
        asyncio.gather(*(_stats(client, s) for s in spokes)),
        _listing(client, 10, ATTENTION_STATES),
        _listing(client, 20, ()),
    )
    errors = tuple(x for x in (failed, recent) if isinstance(x, str))
    failed_agents = failed.agents if isinstance(failed, AgentList) else []
    recent_agents = recent.agents if isinstance(recent, AgentList) else []
    seen = {(a.spoke, a.agent_id) for a in failed_agents}
    blocked = [
        a
        for a in recent_agents
        if a.receipt is not None
        and a.receipt.status == "blocked"
        and (a.spoke, a.agent_id) not in seen
    ]
    unreachable = {
        s for x in (failed, recent) if isinstance(x, AgentList) for s in x.unreachable_spokes
    }
    return FederationView(
        spokes=tuple(rows),
        attention=tuple(_newest_first([*failed_agents, *blocked])),
        recent=tuple(_newest_first(recent_agents)),
        unreachable=tuple(sorted(unreachable)),
        errors=errors,
    )


def _newest_first(agents: Sequence[Agent]) -> list[Agent]:
    return sorted(agents, key=lambda a: a.create_time or _EPOCH, reverse=True)


def encode_cursor(tokens: dict[str, str]) -> str:
    """Each spoke's next-page token, as one URL-safe parameter ("" when none is left)."""
    if not tokens:
        return ""
    raw = json.dumps(tokens, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> dict[str, str]:
    """The tokens :func:`encode_cursor` wrote.

    Raises:
        CursorError: anything else.
    """
    try:
        doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise CursorError("bad cursor") from exc
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in doc.items()
    ):
        raise CursorError("bad cursor")
    return doc


async def agents_page(
    client: Client,
    spoke: str | None,
    states: Collection[AgentState],
    page_size: int,
    cursor: str = "",
) -> AgentRows:
    """A page of agents: the first from one spoke or every spoke; later ones continue each
    spoke that had more (page tokens belong to the spoke that issued them).

    Raises:
        CursorError: ``cursor`` is not one this console wrote.
        CallError: the first page could not be listed at all.
    """
    if not cursor:
        listing = await client.list(spoke, page_size, states)
        return AgentRows(
            tuple(_newest_first(listing.agents)),
            tuple(listing.unreachable_spokes),
            encode_cursor(listing.next_page_tokens),
        )
    tokens = decode_cursor(cursor)
    if spoke is not None:
        tokens = {k: v for k, v in tokens.items() if k == spoke}
    names = sorted(tokens)
    pages = await asyncio.gather(
        *(client.list(s, page_size, states, tokens[s]) for s in names), return_exceptions=True
    )
    agents: list[Agent] = []
    unreachable: list[str] = []
    following: dict[str, str] = {}
    for name, page in zip(names, pages, strict=True):
        if isinstance(page, CallError):
            unreachable.append(name)
            following[name] = tokens[name]  # keep its place: the next click tries it again
        elif isinstance(page, BaseException):
            raise page
        else:
            agents += page.agents
            following |= page.next_page_tokens
    return AgentRows(tuple(_newest_first(agents)), tuple(unreachable), encode_cursor(following))
