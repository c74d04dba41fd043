"""The reason an approve or reject carries, checked the same at the hub and at the spoke, and
the error of a replay that approvals forbid."""

from __future__ import annotations

from typing import Final

import grpc

from . import errors


class ApprovalRequiredError(errors.CommandError):
    """FAILED_PRECONDITION: a replay of an agent whose run needed approvals (or whose profile
    needs them now) is refused; a new spawn waits for approvals as any would."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "APPROVAL_REQUIRED"


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
