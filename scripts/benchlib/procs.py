"""Child processes the benchmark owns, and the CPU time any process has used.

Daemons (spoked, hubd, the echo servers) print ``serving <port>`` on stdout once ready.
Their stdout and stderr go to a log file, never to a pipe nobody reads (a full pipe would
stall them), and the file is polled for the readiness line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_SERVING = re.compile(rb"^serving (\d+)$", re.MULTILINE)


class ProcessError(RuntimeError):
    """A daemon exited or stayed silent instead of becoming ready."""


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc, or NaN if it is gone; with
    ``children``, plus the CPU of its children it has reaped (cutime + cstime)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return float("nan")
    fields = data[data.rfind(b")") + 2 :].split()
    # fields[0] is stat field 3; utime, stime, cutime, cstime are fields 14 to 17.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class Daemon:
    """One long-running child in its own process group, logging to ``log_file``."""

    def __init__(
        self, name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(os.environ if env is None else env)
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ProcessError(f"{self.name} is not started")
        return self._proc.pid

    async def start(self, timeout_s: float = 60.0) -> int:
        """Start it and wait for ``serving <port>``; return the port."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(timeout_s):
                # The readiness line lands in a file: nothing to wait on but the file itself.
                while (port := self._serving_port(offset)) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
        except TimeoutError as exc:
            await self.stop()
            raise ProcessError(f"{self.name} not ready in {timeout_s:g} s") from exc
        except BaseException:
            await self.stop()
            raise
        self.port = port
        return port

    def _serving_port(self, offset: int) -> int | None:
        """The port of the ``serving`` line, None while there is none yet."""
        assert self._proc is not None
        if self._proc.returncode is not None:
            raise ProcessError(f"{self.name} exited: {self._tail(offset)}")
        with self.log_file.open("rb") as f:
            f.seek(offset)
            found = _SERVING.search(f.read())
        return int(found.group(1)) if found else None

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL it after ``grace_s``; idempotent."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await proc.wait()
        except BaseException:
            self._signal(signal.SIGKILL)
            raise

    def kill_now(self) -> None:
        """SIGKILL the group without waiting (last-resort cleanup)."""
        if self._proc is not None and self._proc.returncode is None:
            self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    def _tail(self, offset: int) -> str:
        with contextlib.suppress(OSError), self.log_file.open("rb") as f:
            f.seek(offset)
            return " | ".join(f.read().decode(errors="replace").splitlines()[-8:])
        return "(no log)"
