"""A supervisor's report of its agent's pid, through a pipe (issue 13, spawn-to-running).

spoke/supervisor.sh writes the agent's pid to its ``pid`` file (what a restarted spoked reads)
and the same line to its stdout, which is the write end of a pipe spoked made for this start;
then it points its stdout at /dev/null, so the pipe never outlives the start. spoked learns
the pid the moment the line is written, from the event loop, instead of polling the file
(which cost a millisecond or more of sleeps and file reads per start, and recorded RUNNING
late by as much).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

__all__ = ["PidReport"]

MAX_LINE_BYTES = 32
"""A pid line is a few digits; anything longer is not one."""


class PidReport:
    """One start's pipe: give :attr:`write_fd` to the supervisor as its stdout, call
    :meth:`started` once it is spawned, then ``await`` :meth:`pid`. :meth:`close` always."""

    def __init__(self) -> None:
        self._read_fd, self.write_fd = os.pipe()  # both close-on-exec; spawn dup2s the write end
        os.set_blocking(self._read_fd, False)
        self._loop = asyncio.get_running_loop()
        self._line = self._loop.create_future()
        self._buf = b""
        self._watching = False

    def started(self) -> None:
        """The supervisor holds the write end now: drop ours (so its exit reads as EOF) and
        watch the read end."""
        self._close_write()
        self._loop.add_reader(self._read_fd, self._readable)
        self._watching = True

    def _readable(self) -> None:
        try:
            data = os.read(self._read_fd, MAX_LINE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._buf += data
        if data and b"\n" not in self._buf and len(self._buf) < MAX_LINE_BYTES:
            return  # the rest of the line is on its way
        line = self._buf.split(b"\n", 1)[0] if b"\n" in self._buf else b""
        self._settle(int(line) if line.strip().isdigit() else None)

    def _settle(self, pid: int | None) -> None:
        self._stop_watching()
        if not self._line.done():
            self._line.set_result(pid)

    async def pid(self, timeout_s: float) -> int | None:
        """The pid the supervisor wrote; None if it closed its stdout without one (it ended
        before starting the agent) or nothing came within ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._line), timeout_s)
        return None

    def _stop_watching(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._read_fd)
            self._watching = False

    def _close_write(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def close(self) -> None:
        self._stop_watching()
        self._close_write()
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1
