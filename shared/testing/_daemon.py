"""One server as a child process: started, known ready by its ``serving <port>`` line, stopped.

``hubd`` and ``spoked`` (and the bench's echo servers) print ``serving <port>`` on stdout
once they accept calls. A :class:`Daemon` reads that line from a pipe, writes everything
else the child prints (its stderr directly, its stdout through us) to one log file, and
keeps the pipe drained afterwards so a chatty child never blocks on it. The child runs in
its own session: a terminal's Ctrl-C reaches only the owner, and a signal to the group
reaches the server but never its agents (each has a session of its own).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final

from . import _procs
from ._errors import HarnessError
from ._logs import log_size, log_tail

READY_WORD: Final = "serving"
# Variables that hubd and spoked read over their config file (env > file): a value left in
# the caller's environment would point a server at another Redis, port or key.
_SERVER_ENV_PREFIXES: Final = ("HUB_", "SPOKE_")
_SERVER_ENV_VARS: Final = frozenset({"REDIS_URL"})
_TAIL_LINES: Final = 8
_DRAIN_WAIT_S: Final = 1.0

Report = Callable[[str], None]


class DaemonError(HarnessError):
    """A daemon could not be started, exited at start, or never printed ``serving <port>``."""


def server_argv(program: str, module: str) -> list[str]:
    """The console script next to this interpreter, else ``python -m module``."""
    script = Path(sys.executable).parent / program
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", module]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the servers' own variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SERVER_ENV_PREFIXES) and k not in _SERVER_ENV_VARS
    }
    env.update(extra or {})
    return env


def serving_port(line: bytes) -> int | None:
    """The port of a ``serving <port>`` line, else None."""
    word, _, port = line.decode(errors="replace").strip().partition(" ")
    return int(port) if word == READY_WORD and port.isdigit() else None


def _stdout(process: asyncio.subprocess.Process) -> asyncio.StreamReader:
    if process.stdout is None:
        raise DaemonError(f"pid {process.pid} was started without a stdout pipe")
    return process.stdout


class Daemon:
    """One long-running child that prints ``serving <port>`` once ready.

    ``start`` may be called again after ``stop`` or ``kill`` (a restart: same argv, same
    log, appended). The first start truncates the log.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_file: Path,
        *,
        address: str = "",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
        report: Report | None = None,
    ) -> None:
        """Describe the daemon; nothing runs until :meth:`start`.

        Args:
            name: for messages and the owner's bookkeeping.
            argv: the command line, program first.
            log_file: receives the child's stderr and stdout (but the ``serving`` line).
            address: where it serves, when the owner knows it in advance (informational).
            env: the child's whole environment; :func:`server_env` when None.
            cwd: the child's working directory (this process's when None).
            ready_timeout_s: how long :meth:`start` waits for ``serving <port>``.
            stop_grace_s: how long :meth:`stop` waits after SIGTERM before SIGKILL.
            report: called with a line when :meth:`stop` has to SIGKILL.
        """
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.address = address
        self.env = server_env() if env is None else dict(env)
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self.port = 0
        """The port of the last ``serving`` line; 0 before the first start."""
        self._report = report
        self._process: asyncio.subprocess.Process | None = None
        self._log: BinaryIO | None = None
        self._drain: asyncio.Task[None] | None = None
        self._started_once = False

    def __repr__(self) -> str:
        return f"Daemon({self.name!r}, port={self.port}, running={self.running})"

    @property
    def pid(self) -> int:
        """The pid of the current (or last) process."""
        if self._process is None:
            raise DaemonError(f"{self.name} is not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Started and not yet reaped."""
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped, else None."""
        return None if self._process is None else self._process.returncode

    async def start(self, timeout_s: float | None = None) -> int:
        """Start the process and wait for ``serving <port>``; return the port.

        Args:
            timeout_s: how long to wait this time (``ready_timeout_s`` when None).

        Raises:
            DaemonError: it cannot be executed, exits first, or stays silent past
                ``ready_timeout_s`` (then it is killed); the message names the log and
                quotes its tail.
        """
        if self.running:
            raise DaemonError(f"{self.name} is already running (pid {self.pid})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if not self._started_once:
            self.log_file.write_bytes(b"")
        self._started_once = True
        offset = log_size(self.log_file)
        # Append mode: we (its stdout) and the child (its stderr) both write to the file.
        log = self.log_file.open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise DaemonError(f"cannot start {self.name} ({shlex.join(self.argv)}): {exc}") from exc
        self._process, self._log = process, log
        try:
            timeout = self.ready_timeout_s if timeout_s is None else timeout_s
            self.port = await self._await_serving(process, log, offset, timeout)
        except BaseException:
            await _procs.kill(process)
            await self._close_log()
            raise
        self._drain = asyncio.create_task(self._copy_stdout(process, log), name=f"{self.name}-out")
        return self.port

    async def _await_serving(
        self, process: asyncio.subprocess.Process, log: BinaryIO, offset: int, timeout_s: float
    ) -> int:
        stdout = _stdout(process)
        try:
            async with asyncio.timeout(timeout_s):
                while line := await stdout.readline():
                    port = serving_port(line)
                    if port is not None:
                        return port
                    log.write(line)
                    log.flush()
                await process.wait()
        except TimeoutError:
            raise self._failure(
                f"{self.name} did not print '{READY_WORD} <port>' within {timeout_s:g} s",
                offset,
            ) from None
        raise self._failure(f"{self.name} exited with status {process.returncode} at start", offset)

    def _failure(self, what: str, offset: int) -> DaemonError:
        tail = "\n".join(f"  {line}" for line in log_tail(self.log_file, offset=offset))
        return DaemonError(f"{what}; see {self.log_file}" + (f"\n{tail}" if tail else ""))

    @staticmethod
    async def _copy_stdout(process: asyncio.subprocess.Process, log: BinaryIO) -> None:
        stdout = _stdout(process)
        while line := await stdout.readline():
            log.write(line)
            log.flush()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the daemon's process group (never to its agents)."""
        if self._process is not None:
            _procs.signal_group(self._process, sig)

    async def kill(self) -> None:
        """SIGKILL, as a crash would, and reap. Idempotent."""
        if self._process is not None:
            await _procs.kill(self._process)
        await self._close_log()

    async def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (default ``stop_grace_s``); always reap.
        Idempotent."""
        grace = self.stop_grace_s if grace_s is None else grace_s
        if self._process is not None:

            def escalate() -> None:
                if self._report is not None:
                    self._report(f"{self.name} ignored SIGTERM for {grace:g} s; SIGKILL")

            await _procs.terminate(self._process, grace, escalate)
        await self._close_log()

    async def restart(self) -> int:
        """Stop it (if it runs) and start it again with the same argv; the new port."""
        await self.stop()
        return await self.start()

    async def _close_log(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None:
            # The pipe reaches EOF when the daemon exits; a grandchild holding it open
            # must not hold us up.
            await asyncio.wait({drain}, timeout=_DRAIN_WAIT_S)
            drain.cancel()
        log, self._log = self._log, None
        if log is not None:
            log.close()
