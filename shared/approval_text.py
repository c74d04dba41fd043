"""The reason an approve or reject carries, checked the same at the hub and at the spoke."""

from __future__ import annotations

from typing import Final

from . import errors

MAX_REASON_CHARS: Final = 1024
"""The longest reason an approve or reject may carry (docs/protocol.md, Approvals)."""


def check_reason(reason: str) -> str:
    """``reason`` if it is at most 1,024 characters with no NUL, else INVALID_ARGUMENT."""
    if len(reason) > MAX_REASON_CHARS:
        raise errors.InvalidCommandError(
            f"reason is longer than {MAX_REASON_CHARS} characters", limit="reason"
        )
    if "\x00" in reason:
        raise errors.InvalidCommandError("reason must not contain NUL characters")
    return reason
