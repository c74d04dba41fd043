"""Pages of agent records and their opaque page tokens (an offset, base64-encoded)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .backend import PageTokenError
from .model import AgentRecord

MAX_PAGE_OFFSET = 2**40
"""Page offsets beyond this are refused (Redis takes signed 64-bit ranges)."""


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
