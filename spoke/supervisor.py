"""Agents under supervisors that outlive spoked (issue 13).

Each attempt of an agent runs under a small POSIX sh program, spoke/supervisor.sh, run by
``dash`` where there is one (about 0.5 MB resident against about 10 MB for a Python
interpreter; docs/benchmarks.md). spoked starts it in a session of its own, so a SIGKILL or
SIGTERM of spoked does not reach it; it starts the agent in a session and process group of
its own (a kill reaches the whole group, and on hosts with cgroup v2 delegation the agent's
own cgroup, spoke/supervisor_cgroup.py), appends its stdout and stderr to files and writes
its exit status to a file (atomically) when it ends.

Each attempt has a state directory, ``<agent_state_dir>/<agent id>.<attempt>``: derived
from the record alone, so a restarted spoked finds it (:func:`locate`) even when its
predecessor died before it recorded anything. There:

==========  ==============================================================
``sup``     the supervisor's pid
``pid``     the agent's pid (its process group's id too); also reported once on the
            supervisor's stdout, a pipe spoked reads (spoke/supervisor_report.py)
``stdin``   the task, for a profile with ``task_on_stdin``
``stdout``  the agent's stdout, appended (``stderr`` likewise)
``exit``    the agent's wait status as sh gives it (128+N: killed by signal N)
``cgroup``  the agent's cgroup directory, where there is one
==========  ==============================================================

spoked reads the output files from the offsets it recorded last (:class:`SupervisedAgent`)
and takes the exit from ``exit``; the final tails are the files' last bytes, so a restart
loses none of them. The worker (spoke/worker.py) removes the directory once the end is
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from .output import OutputTail
from .processes import (
    UNKNOWN_START_TICKS,
    ProcessIdentity,
    identity_alive,
    process_alive,
    read_start_ticks,
    signal_group,
)
from .profiles import Profile
from .runtime import AgentStartError, OutputCallback, agent_environment, command_line, read_secrets
from .supervisor_cgroup import CgroupSupport, agent_cgroup, kill_cgroup, remove_cgroup
from .supervisor_report import PidReport
from .supervisor_spawn import ChildExit, spawn

__all__ = [
    "SCRIPT",
    "Located",
    "SupervisedAgent",
    "attempt_dir",
    "code_of",
    "locate",
    "remove_state",
    "shell",
    "start_supervised",
    "state_root",
]

log = structlog.get_logger("hubspoke.spoke.supervisor")

SCRIPT = Path(__file__).with_name("supervisor.sh")
"""The supervisor program (package data)."""

TAIL_S = 0.2
"""How often a supervised agent's output files and exit file are looked at."""
PID_WAIT_S = 10.0
"""How long a start waits for the supervisor to report the agent's pid."""
SESSION_POLL_S = 0.0002
"""The first look again for the reported agent leading its own session (doubling up to
SESSION_POLL_MAX_S: on a busy host its setsid(1) can take several milliseconds)."""
SESSION_POLL_MAX_S = 0.002
REAP_WAIT_S = 2.0
"""How long a finished agent's supervisor (spoked's child) is waited for, to reap it."""
MAX_READ_BYTES = 1024 * 1024
"""The most output read from one stream per look (a flood waits for the next one)."""


def shell() -> str:
    """The shell that runs the supervisor: ``dash`` if installed, else ``/bin/sh``."""
    return shutil.which("dash") or "/bin/sh"


def state_root(configured: Path | None, spoke_name: str, redis_url: str = "") -> Path:
    """The spoke's agent state directory: ``agent_state_dir``, or one of its own under the
    system's temporary directory, named for the spoke and its site's Redis (so two sites of
    one name on a host, e.g. tests, never share one)."""
    if configured is not None:
        return configured.absolute()
    site = hashlib.sha256(redis_url.encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"hubspoke-agents-{os.getuid()}-{spoke_name}-{site}"


def attempt_dir(root: Path, agent_id: str, attempt: int) -> Path:
    return root / f"{agent_id}.{attempt}"


def code_of(status: int) -> int:
    """A sh wait status as an exit code: 128+N (N a signal number) → -N, like subprocess.
    (An agent that exits 129-192 by itself reads as killed: sh cannot tell them apart.)"""
    if 128 < status <= 128 + 64:
        return -(status - 128)
    return status


def _read_line_int(path: Path) -> int | None:
    """The integer on the file's first line, once the whole line is written."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.endswith("\n"):
        return None
    try:
        return int(text.split("\n", 1)[0])
    except ValueError:
        return None


def _runs_supervisor(pid: int, ticks: int | None, state: Path) -> bool:
    """True if ``pid`` is alive, started at ``ticks`` (when known) and is the supervisor of
    ``state`` (its command line names that directory), so a reused pid never matches."""
    if ticks is not None and ticks != UNKNOWN_START_TICKS:
        if not process_alive(pid, ticks):
            return False
    elif read_start_ticks(pid) is None:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return str(SCRIPT).encode() in args and str(state).encode() in args


@dataclass(frozen=True, slots=True)
class Located:
    """An attempt's supervisor found on disk (:func:`locate`)."""

    dir: Path
    supervisor: ProcessIdentity
    agent: ProcessIdentity | None
    """None if the supervisor had not started the agent yet."""
    exit_status: int | None
    """The status in ``exit``; None while the agent runs."""


def locate(root: Path, agent_id: str, attempt: int, sup_ticks: int | None) -> Located | None:
    """The supervisor of this attempt: exited (an ``exit`` file), or alive (checked by pid,
    start time and command line). None if neither: it never started, or died unrecorded."""
    state = attempt_dir(root, agent_id, attempt)
    if not state.is_dir():
        return None
    status = _read_line_int(state / "exit")
    sup_pid = _read_line_int(state / "sup")
    if status is None and (sup_pid is None or not _runs_supervisor(sup_pid, sup_ticks, state)):
        return None
    sup = ProcessIdentity(sup_pid or 0, sup_pid or 0, sup_ticks or UNKNOWN_START_TICKS)
    agent_pid = _read_line_int(state / "pid")
    agent = None
    if agent_pid is not None:
        ticks = read_start_ticks(agent_pid)
        agent = ProcessIdentity(
            agent_pid, agent_pid, UNKNOWN_START_TICKS if ticks is None else ticks
        )
    return Located(state, sup, agent, status)


def remove_state(state: Path) -> None:
    """Remove an attempt's state directory (its end is recorded)."""
    shutil.rmtree(state, ignore_errors=True)


def _tail_of(path: Path, limit: int) -> OutputTail:
    tail = OutputTail(limit)
    with contextlib.suppress(OSError), open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        tail.write(f.read(limit))
        tail.total_bytes = size
    return tail


class SupervisedAgent:
    """A supervised agent as this spoked sees it: started by :func:`start_supervised` or
    re-attached after a restart (``child`` None). The same surface as
    :class:`~hubspoke.spoke.runtime.AgentProcess` for the worker."""

    def __init__(
        self,
        state: Path,
        supervisor: ProcessIdentity,
        identity: ProcessIdentity,
        *,
        child: ChildExit | None = None,
        on_output: OutputCallback | None = None,
        tail_bytes: int = 65536,
        offsets: tuple[int, int] = (0, 0),
    ) -> None:
        self.dir = state
        self.supervisor = supervisor
        self.identity = identity
        """The agent's pid, pgid and start time; persist it for crash recovery."""
        self.stdout = OutputTail(tail_bytes)
        """The last bytes of the agent's stdout (filled from the file when it ends)."""
        self.stderr = OutputTail(tail_bytes)
        self._tail_bytes = tail_bytes
        self._child = child
        self._on_output = on_output
        self._offsets = {"stdout": offsets[0], "stderr": offsets[1]}
        self._returncode: int | None = None
        cg = _read_text(state / "cgroup")
        self._cgroup = Path(cg) if cg else None
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch(), name=f"supervised-{identity.pid}"
        )

    def __repr__(self) -> str:
        state = "running" if self._returncode is None else f"returncode={self._returncode}"
        return f"<SupervisedAgent pid={self.identity.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def offsets(self) -> tuple[int, int]:
        """How far stdout and stderr have been read (bytes): recorded, so a restarted
        spoked goes on from there."""
        return self._offsets["stdout"], self._offsets["stderr"]

    async def wait(self) -> int:
        """Wait until the agent has exited and its output is read; the exit code (negative:
        killed by that signal)."""
        return await asyncio.shield(self._monitor)

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM the agent's group, up to ``grace_s`` for it to end, then SIGKILL the
        group (and its cgroup). Returns once :meth:`wait` would."""
        if not self._monitor.done():
            self._signal(signal.SIGTERM)
            await asyncio.wait({self._monitor}, timeout=max(grace_s, 0.0))
            if not self._monitor.done():
                self._signal(signal.SIGKILL)
        await asyncio.shield(self._monitor)

    def cleanup(self) -> None:
        """The end is recorded: remove the state directory and the cgroup (if any)."""
        if self._cgroup is not None:
            remove_cgroup(self._cgroup)
        remove_state(self.dir)

    def detach(self) -> None:
        """Stop watching; the agent and its supervisor run on (a spoked upgrade)."""
        self._monitor.cancel()

    def _signal(self, sig: signal.Signals) -> None:
        # The supervisor writes `exit` once the agent is gone: until then the group is ours.
        if (self.dir / "exit").exists():
            return
        if identity_alive(self.identity):
            signal_group(self.identity.pgid, sig)
        if sig is signal.SIGKILL and self._cgroup is not None:
            kill_cgroup(self._cgroup)

    def _read_output(self, limit: int | None) -> None:
        for name in ("stdout", "stderr"):
            try:
                with open(self.dir / name, "rb") as f:
                    f.seek(self._offsets[name])
                    data = f.read(limit if limit is not None else -1)
            except OSError:
                continue
            if not data:
                continue
            self._offsets[name] += len(data)
            if self._on_output is not None:
                try:
                    self._on_output(name, data)
                except Exception:
                    log.exception("on_output_failed", pid=self.identity.pid, stream=name)

    async def _watch(self) -> int:
        child_exit = self._child
        try:
            while True:
                self._read_output(MAX_READ_BYTES)
                status = _read_line_int(self.dir / "exit")
                if status is not None:
                    break
                sup = self.supervisor
                if self._child is None and not _runs_supervisor(sup.pid, sup.start_ticks, self.dir):
                    status = _read_line_int(self.dir / "exit")
                    if status is None:  # the supervisor was killed: the agent goes too
                        log.warning("supervisor_vanished", pid=sup.pid, agent=self.identity.pid)
                        self._signal(signal.SIGKILL)
                        status = 128 + signal.SIGKILL
                    break
                if child_exit is not None:
                    await child_exit.wait(TAIL_S)
                    if child_exit.exited and _read_line_int(self.dir / "exit") is None:
                        log.warning("supervisor_vanished", pid=sup.pid, agent=self.identity.pid)
                        self._signal(signal.SIGKILL)
                        status = 128 + signal.SIGKILL
                        break
                else:
                    await asyncio.sleep(TAIL_S)
            self._read_output(None)
            if child_exit is not None:  # it exits right after the rename: reap it
                await child_exit.wait(REAP_WAIT_S)
        finally:
            if child_exit is not None:  # detached or done: stop watching, never kill it
                child_exit.close()
        self.stdout = _tail_of(self.dir / "stdout", self._tail_bytes)
        self.stderr = _tail_of(self.dir / "stderr", self._tail_bytes)
        self._returncode = code_of(status)
        return self._returncode


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _check_program(profile: Profile, argv0: str, env: Mapping[str, str]) -> None:
    """What exec would say, said before the supervisor starts (START_FAILED, as without one)."""
    if "/" in argv0:
        path: str | None = argv0
        if profile.cwd is not None and not os.path.isabs(argv0):
            path = os.path.join(profile.cwd, argv0)
        if path is not None and not os.path.exists(path):
            path = None
    else:
        path = shutil.which(argv0, mode=os.F_OK, path=env.get("PATH", os.defpath))
    if path is None:
        raise AgentStartError(f"profile {profile.name!r}: program {argv0!r} not found")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise AgentStartError(f"profile {profile.name!r}: program {argv0!r} is not executable")


def _own_session(pid: int) -> bool:
    """True once the agent leads its own session (``setsid`` ran: a signal to its group
    reaches it), or is gone already."""
    try:
        return os.getsid(pid) == pid
    except OSError:
        return True


async def _agent_pid(state: Path, child: ChildExit, report: PidReport) -> int | None:
    """The agent's pid once it leads its own session (a signal to its group reaches it), as
    the supervisor reports it on its pipe (spoke/supervisor_report.py); None if it did not
    start one within PID_WAIT_S. A supervisor that ended without a report: its pid file."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PID_WAIT_S
    pid = await report.pid(PID_WAIT_S)
    if pid is None:  # it closed its stdout without a line: ending, or failed
        await child.wait(max(0.0, deadline - loop.time()))
        return _read_line_int(state / "pid") if child.exited else None
    delay = SESSION_POLL_S  # setsid(1) runs in the agent's process right after the fork
    while not _own_session(pid):
        if child.exited:
            break
        if loop.time() >= deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, SESSION_POLL_MAX_S)
    return pid


def _prepare_state(state: Path, profile: Profile, task: str, cgroup: Path | None) -> int:
    """Create the attempt's state directory; an fd of its ``supervisor.err`` (the
    supervisor's own stderr)."""
    # Few system calls (issue 13: each is a chance for another thread to take the GIL): the
    # directory is made at once, its parent only when missing (a first attempt).
    try:
        os.mkdir(state, 0o700)
    except FileNotFoundError:
        state.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.mkdir(state, 0o700)
    except FileExistsError:  # left by a start that died before the supervisor ran
        remove_state(state)
        os.mkdir(state, 0o700)
    for name in ("stdout", "stderr"):  # new and empty: the directory is new
        os.close(os.open(state / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    if profile.task_on_stdin:
        (state / "stdin").write_bytes(task.encode("utf-8", errors="replace"))
    if profile.cwd is not None:  # the supervisor changes to it (posix_spawn cannot)
        (state / "cwd").write_text(f"{os.path.abspath(profile.cwd)}\n")
    if cgroup is not None:
        (state / "cgroup").write_text(f"{cgroup}\n")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    return os.open(state / "supervisor.err", flags, 0o600)


async def start_supervised(
    profile: Profile,
    *,
    task: str,
    agent_id: str,
    attempt: int,
    root: Path,
    cgroups: CgroupSupport,
    extra_env: Mapping[str, str] | None = None,
    on_output: OutputCallback | None = None,
    tail_bytes: int = 65536,
) -> SupervisedAgent:
    """Start this attempt under a supervisor (module docstring); the agent runs once its pid
    is known. Raises :class:`~hubspoke.spoke.runtime.AgentStartError` as
    :func:`~hubspoke.spoke.runtime.start_agent` does."""
    argv = command_line(profile, task)
    env = agent_environment(
        profile,
        task=task,
        agent_id=agent_id,
        attempt=attempt,
        extra_env=extra_env,
        secrets=read_secrets(profile),
    )
    _check_program(profile, argv[0], env)
    if profile.cwd is not None and "\n" in profile.cwd:
        raise AgentStartError(f"profile {profile.name!r}: working directory holds a newline")
    state = attempt_dir(root, agent_id, attempt)
    try:
        err = _prepare_state(state, profile, task, agent_cgroup(cgroups, agent_id, attempt))
        report = PidReport()
        try:
            pid = spawn([shell(), str(SCRIPT), str(state), *argv], env, err, report.write_fd)
            report.started()
            child = ChildExit(pid)
        except BaseException:
            report.close()
            raise
        finally:
            os.close(err)
    except (OSError, ValueError) as exc:
        raise AgentStartError(
            f"profile {profile.name!r}: cannot start the supervisor of {argv[0]!r}: {exc}"
        ) from exc
    sup_ticks = read_start_ticks(child.pid)
    supervisor = ProcessIdentity(
        child.pid, child.pid, UNKNOWN_START_TICKS if sup_ticks is None else sup_ticks
    )
    try:
        agent_pid = await _agent_pid(state, child, report)
    finally:
        report.close()
    if agent_pid is None:
        signal_group(child.pid, signal.SIGKILL)
        await child.wait(PID_WAIT_S)
        child.close()
        why = _read_text(state / "supervisor.err")[-500:] or "it did not start the agent"
        remove_state(state)
        raise AgentStartError(f"profile {profile.name!r}: supervisor failed: {why}")
    ticks = read_start_ticks(agent_pid)
    identity = ProcessIdentity(
        agent_pid, agent_pid, UNKNOWN_START_TICKS if ticks is None else ticks
    )
    log.info(
        "agent_started", pid=agent_pid, supervisor=child.pid, profile=profile.name, attempt=attempt
    )
    return SupervisedAgent(
        state, supervisor, identity, child=child, on_output=on_output, tail_bytes=tail_bytes
    )
