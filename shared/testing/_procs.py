"""Signalling and stopping a child that leads its own process group.

Everything the harness starts runs with ``start_new_session=True``, so its pid is also its
process group: a signal to the group reaches the server and anything it forked into it
(a redis-server's AOF rewrite child), but never an agent, which has a session of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable


def signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group of ``process``; a group already gone is no error."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)


async def terminate(
    process: asyncio.subprocess.Process,
    grace_s: float,
    on_escalate: Callable[[], None] | None = None,
) -> None:
    """SIGTERM the group (SIGCONT first: a stopped process must see it), SIGKILL it after
    ``grace_s``, and reap. Cancelled midway, it SIGKILLs before re-raising, so no child
    outlives its owner. Idempotent."""
    if process.returncode is None:
        signal_group(process, signal.SIGCONT)
        signal_group(process, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            if on_escalate is not None:
                on_escalate()
            signal_group(process, signal.SIGKILL)
        except BaseException:
            signal_group(process, signal.SIGKILL)
            raise
    await process.wait()


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the group, as a crash would (nothing is flushed), and reap."""
    signal_group(process, signal.SIGCONT)
    signal_group(process, signal.SIGKILL)
    await process.wait()
