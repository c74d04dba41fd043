"""Starting a supervisor as a bare child process, and reaping it, without asyncio's
subprocess machinery.

A supervisor must be able to outlive the spoked that started it (an upgrade leaves it
running). An ``asyncio.subprocess.Process`` that is never waited for warns when it is
collected ("subprocess ... is still running", "unclosed transport") and closing its transport
kills the child; so supervisors are started with :func:`os.posix_spawn` (in a new session)
and reaped through a pidfd (:class:`ChildExit`): stopping to watch one leaves it running,
with nothing to warn about.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence

__all__ = ["ChildExit", "spawn"]


def spawn(
    argv: Sequence[str], env: Mapping[str, str], stderr_fd: int, stdout_fd: int | None = None
) -> int:
    """Start ``argv`` in a new session, stdin /dev/null, stdout ``stdout_fd`` (or /dev/null),
    stderr ``stderr_fd``; its pid. Raises OSError (or ValueError for a NUL byte) as exec
    would."""
    out: tuple[int, int, str, int, int] | tuple[int, int, int]
    out = (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)
    if stdout_fd is not None:
        out = (os.POSIX_SPAWN_DUP2, stdout_fd, 1)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        out,
        (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
    ]
    return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it has exited; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


class ChildExit:
    """Our child's exit, as an awaitable: :meth:`wait` returns once it exited (and is
    reaped); :meth:`close` stops watching and leaves it running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd here: wait() polls
            return
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        if _reap(self.pid):
            self._done()

    def _done(self) -> None:
        self.close()
        if not self._exited.done():
            self._exited.set_result(None)

    @property
    def exited(self) -> bool:
        if not self._exited.done() and self._fd is None and _reap(self.pid):
            self._done()
        return self._exited.done()

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the exit; True if it came."""
        if self._fd is None:  # polling
            deadline = self._loop.time() + timeout_s
            while not self.exited and self._loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(min(0.05, timeout_s))
            return self.exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), timeout_s)
        return self._exited.done()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
