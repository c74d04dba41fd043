"""Pages of agent records and their opaque page tokens (an offset, base64-encoded).

A page is read from an ordered index of agent ids (the time index, or bullmq's failed set)
at the token's offset. A filtered page (by state, or by owner for a caller whose policy
scope is ``own``) reads on through the index until it is full, and its token is the offset
just after the last entry it read: filtering never ends paging early. One call reads at
most ``SCAN_LIMIT`` index entries, so a page may be short, or even empty, and still carry a
token; paging ends only when the token is empty.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .backend import PageTokenError
from .model import AgentRecord

MAX_PAGE_OFFSET = 2**40
"""Page offsets beyond this are refused (Redis takes signed 64-bit ranges)."""

SCAN_LIMIT = 5000
"""Index entries one filtered page reads at most before it answers with what it has."""

IdReader = Callable[[int, int], Awaitable[list[str]]]
"""(offset, count) → the ids at those positions of the index (fewer at its end)."""
RecordLoader = Callable[[list[str]], Awaitable[list[AgentRecord | None]]]
"""ids → their records, aligned (None for one that no longer exists)."""
Scan = Callable[[int, int], Awaitable[tuple[list[str], list[AgentRecord | None]]]]
"""(offset, count) → the ids at those positions and their records, aligned: an index read
and its records' read together (spoke/list_read.py does both in one round trip)."""


@dataclass(frozen=True, slots=True)
class Page:
    agents: list[AgentRecord]
    next_token: str


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The offset a token names; ``PageTokenError`` for one this spoke did not issue."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        offset = int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PageTokenError("page_token is not valid") from exc
    if kind != "o" or not 0 <= offset <= MAX_PAGE_OFFSET:
        raise PageTokenError("page_token is not valid")
    return offset


def next_token(offset: int, page_size: int, got: int) -> str:
    """The token of the page after one read at ``offset``; empty when that page was short."""
    return encode_token(offset + page_size) if got == page_size else ""


async def collect(
    read: IdReader,
    load: RecordLoader,
    token: str,
    page_size: int,
    keep: Callable[[AgentRecord], bool] | None = None,
) -> Page:
    """The page at ``token``: with ``keep``, only the records it keeps, read on until the
    page is full, the index ends, or ``SCAN_LIMIT`` entries were read (module docstring)."""

    async def scan(offset: int, count: int) -> tuple[list[str], list[AgentRecord | None]]:
        ids = await read(offset, count)
        return ids, await load(ids)

    return await collect_scanned(scan, token, page_size, keep)


async def collect_scanned(
    scan: Scan,
    token: str,
    page_size: int,
    keep: Callable[[AgentRecord], bool] | None = None,
) -> Page:
    """``collect`` with the index and its records read by one ``scan`` per batch."""
    offset = decode_token(token)
    if keep is None:
        ids, records = await scan(offset, page_size)
        agents = [a for a in records if a is not None]
        return Page(agents=agents, next_token=next_token(offset, page_size, len(ids)))
    kept: list[AgentRecord] = []
    pos = offset
    while pos - offset < SCAN_LIMIT:
        ids, records = await scan(pos, page_size)
        for i, rec in enumerate(records):
            if rec is not None and keep(rec):
                kept.append(rec)
                if len(kept) == page_size:
                    return Page(agents=kept, next_token=encode_token(pos + i + 1))
        pos += len(ids)
        if len(ids) < page_size:
            return Page(agents=kept, next_token="")
    return Page(agents=kept, next_token=encode_token(pos))
