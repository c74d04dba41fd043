"""asyncio helpers for our long-running background loops."""

from __future__ import annotations

import asyncio

__all__ = ["raise_if_cancelling"]


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task has been asked to stop.

    redis-py can swallow a cancel that lands while it opens a connection: the command then
    completes as if nothing happened, and a loop that goes on to ``asyncio.sleep`` would
    hold a shutdown up for its whole interval. Loops call this before they wait.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
