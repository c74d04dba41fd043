"""Waiting on a condition another process makes true: polled, with a deadline, never a
fixed sleep (the suite runs on busy machines)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["until"]


async def until(
    check: Callable[[], Awaitable[bool]],
    timeout_s: float = 30.0,
    what: str = "the condition",
    poll_s: float = 0.05,
) -> float:
    """Poll ``check()`` until it is true; return the seconds it took.

    Raises:
        AssertionError: naming ``what``, when ``timeout_s`` passes first.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(poll_s)
    return time.monotonic() - started
