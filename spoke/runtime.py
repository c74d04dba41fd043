"""Agent runtime: launch, watch and kill agent processes.

Every agent runs in its own session and process group (``start_new_session``), so
its pgid equals its pid and the whole tree it forks can be signalled at once.
Stopping is SIGTERM to the group, a grace period, then SIGKILL to the group; when
the agent (the group leader) exits on its own, the rest of its group is SIGKILLed
so no orphans remain.

Process identities and group kills that outlive this spoked (crash recovery) are in
:mod:`hubspoke.spoke.processes`.

The output pipes are created here rather than by asyncio, so that the agent's exit
is noticed at once even while a grandchild still holds stdout open, and so that the
event loop reads them through a plain protocol: each read (at most 256 KiB) is one
loop callback, so a flooding agent cannot starve other tasks.

A profile's secrets (spoke/profiles.py) are read from their owner-only files at every start
(:func:`read_secrets`) and added to the agent's environment explicitly; a secret that cannot
be read fails the start with a message naming its variable, never its value.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from hubspoke.errors import HubspokeError
from hubspoke.keys import owner_only_problem
from hubspoke.spoke.output import OutputTail
from hubspoke.spoke.processes import (
    KILL_WAIT_S,
    UNKNOWN_START_TICKS,
    ProcessIdentity,
    read_start_ticks,
    signal_group,
)
from hubspoke.spoke.profiles import TASK_PLACEHOLDER, Profile, task_refusal

__all__ = [
    "AgentProcess",
    "AgentStartError",
    "OutputCallback",
    "agent_environment",
    "command_line",
    "read_secrets",
    "start_agent",
]

_log = structlog.get_logger(__name__)

OutputCallback = Callable[[str, bytes], None]
"""``on_output(stream_name, chunk)``: stream_name is "stdout" or "stderr". Must be cheap."""

BASE_ENV_VARS = ("PATH", "HOME", "LANG")
# After the group has been SIGKILLed, how long its output pipes may stay open (a
# process that left the group with setsid() may hold them) before they are closed.
DRAIN_TIMEOUT_S = 2.0

MAX_SECRET_BYTES = 64 * 1024
"""The largest secret file read; a longer one fails the start."""

_T = TypeVar("_T")


class AgentStartError(HubspokeError):
    """The agent could not be started (program missing or not executable, bad cwd, ...)."""


def _secret_value(profile: Profile, var: str, path: Path) -> str:
    """One secret's value, or AgentStartError naming the variable (never the value)."""
    where = f"profile {profile.name!r}: secret {var} cannot be read"
    problem = owner_only_problem(path, "secret file")
    if problem:
        _log.warning("secret_unavailable", profile=profile.name, variable=var, problem=problem)
        missing = not os.path.lexists(path)
        raise AgentStartError(f"{where}: its file is {'missing' if missing else 'not owner-only'}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        _log.warning("secret_unreadable", profile=profile.name, variable=var, error=exc.strerror)
        raise AgentStartError(f"{where}: {exc.strerror or 'read failed'}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise AgentStartError(f"{where}: its file is larger than {MAX_SECRET_BYTES} bytes")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if b"\x00" in data:
        raise AgentStartError(f"{where}: it contains a NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgentStartError(f"{where}: it is not UTF-8 text") from None


def read_secrets(profile: Profile) -> dict[str, str]:
    """The values of the profile's secrets, read now from their owner-only files (one
    trailing newline dropped), so a rotated file counts from the next start.

    Raises :class:`AgentStartError` naming the variable when a file is missing, not
    owner-only, unreadable, over ``MAX_SECRET_BYTES``, not UTF-8 or holds a NUL byte.
    """
    return {var: _secret_value(profile, var, Path(path)) for var, path in profile.secrets.items()}


def agent_environment(
    profile: Profile,
    *,
    task: str,
    agent_id: str,
    attempt: int,
    extra_env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of an agent.

    With ``inherit_env`` the spoke's environment, else only PATH, HOME and LANG;
    then the profile's ``env``, then ``extra_env``, then the profile's ``secrets`` (values
    from :func:`read_secrets`, added explicitly whatever ``inherit_env`` says), then
    HUBSPOKE_TASK, HUBSPOKE_AGENT_ID and HUBSPOKE_ATTEMPT. Other HUBSPOKE_* variables of the
    spoke itself are not passed on unless ``inherit_env`` is set.
    """
    if profile.inherit_env:
        env = dict(os.environ)
    else:
        env = {name: os.environ[name] for name in BASE_ENV_VARS if name in os.environ}
    env.update(profile.env)
    if extra_env:
        env.update(extra_env)
    if secrets:
        env.update(secrets)
    env["HUBSPOKE_TASK"] = task
    env["HUBSPOKE_AGENT_ID"] = agent_id
    env["HUBSPOKE_ATTEMPT"] = str(attempt)
    return env


def _log_task_failure(task: asyncio.Task[_T]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        _log.error("agent_task_failed", task=task.get_name(), exc_info=exc)


class _ReadProtocol(asyncio.Protocol):
    """Feeds one output pipe into an OutputTail and the on_output callback."""

    def __init__(
        self, name: str, tail: OutputTail, on_output: OutputCallback | None, pid: int
    ) -> None:
        self._name = name
        self._tail = tail
        self._on_output = on_output
        self._pid = pid
        self._callback_failed = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._tail.write(data)
        if self._on_output is None:
            return
        try:
            self._on_output(self._name, data)
        except Exception:
            # A broken callback must not close the pipe (that would block the agent).
            if not self._callback_failed:
                self._callback_failed = True
                _log.exception("on_output_failed", pid=self._pid, stream=self._name)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _WriteProtocol(asyncio.BaseProtocol):
    """The stdin pipe: no flow control needed, the transport buffers the task."""

    def __init__(self) -> None:
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class AgentProcess:
    """A running agent, started by :func:`start_agent`."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        identity: ProcessIdentity,
        stdout: OutputTail,
        stderr: OutputTail,
        readers: list[tuple[asyncio.BaseTransport, _ReadProtocol]],
        stdin: tuple[asyncio.WriteTransport, _WriteProtocol] | None,
    ) -> None:
        self._proc = proc
        self.identity = identity
        """pid, pgid and start time; persist it for crash recovery."""
        self.stdout = stdout
        """The last bytes of the agent's stdout."""
        self.stderr = stderr
        """The last bytes of the agent's stderr."""
        self._readers = readers
        self._stdin = stdin
        self._returncode: int | None = None
        # Set once the group was SIGKILLed after the leader exited: from then on the
        # pgid may be reused by an unrelated process, so it is never signalled again.
        self._group_finished = False
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch(), name=f"agent-{identity.pid}"
        )
        self._monitor.add_done_callback(_log_task_failure)

    def __repr__(self) -> str:
        state = "running" if self._returncode is None else f"returncode={self._returncode}"
        return f"<AgentProcess pid={self.identity.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.identity.pid

    @property
    def returncode(self) -> int | None:
        """None until :meth:`wait` would return; negative = killed by that signal."""
        return self._returncode

    async def wait(self) -> int:
        """Wait until the agent exited, its group is killed and its output is drained.

        Returns the exit code (negative: killed by that signal). Cancelling the caller
        does not stop the watching.
        """
        return await asyncio.shield(self._monitor)

    async def terminate(self, grace_s: float) -> None:
        """SIGTERM the process group, wait up to ``grace_s`` for the agent to exit,
        then SIGKILL the group. Idempotent; returns once :meth:`wait` would."""
        if self._proc.returncode is None:
            self._signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace_s, 0.0)):
                    await self._proc.wait()
            if self._proc.returncode is None:
                self._signal(signal.SIGKILL)
        # The monitor SIGKILLs the rest of the group once the leader has exited.
        await asyncio.shield(self._monitor)

    def _signal(self, sig: signal.Signals) -> None:
        if not self._group_finished:
            signal_group(self.identity.pgid, sig)

    def _finish_group(self) -> None:
        """The leader has exited: kill what is left of its group, exactly once."""
        if not self._group_finished:
            self._signal(signal.SIGKILL)
            self._group_finished = True

    def _close_pipes(self) -> None:
        for transport, _ in self._readers:
            transport.close()
        if self._stdin is not None and not self._stdin[1].lost:
            # Still flushing the task to a reader that never reads it: drop it.
            self._stdin[0].abort()

    async def _watch(self) -> int:
        try:
            returncode = await self._proc.wait()
            self._finish_group()
            pending = [p.closed for _, p in self._readers if not p.closed.done()]
            if pending:
                _, still_open = await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)
                if still_open:
                    _log.warning("agent_output_still_open", pid=self.identity.pid)
        except asyncio.CancelledError:
            # The owner (or the loop shutting down) gave up on this agent: do not
            # leave it running unwatched.
            if self._proc.returncode is None:
                self._signal(signal.SIGKILL)
                # Reap it, so no zombie and no unclosed transport is left behind; a
                # second cancellation only cuts this short, the first is re-raised.
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(KILL_WAIT_S):
                        await self._proc.wait()
            self._finish_group()
            raise
        else:
            self._returncode = returncode
            return returncode
        finally:
            self._close_pipes()


def command_line(profile: Profile, task: str) -> list[str]:
    """The argv with ``{task}`` substituted; checks the cwd (a quick stat) and, again, that
    the profile may run this task (the spoke checked it at spawn: this holds for a record
    stored before a config change, or written to Redis by someone else)."""
    if not profile.argv or not profile.argv[0]:
        raise AgentStartError(f"profile {profile.name!r}: argv is empty")
    refusal = task_refusal(profile, task)
    if refusal is not None:
        raise AgentStartError(refusal)
    if profile.cwd is not None and not os.path.isdir(profile.cwd):
        raise AgentStartError(
            f"profile {profile.name!r}: working directory {profile.cwd!r} does not exist"
        )
    return [element.replace(TASK_PLACEHOLDER, task) for element in profile.argv]


def _pipe_file(fd: int, *, write: bool) -> io.FileIO:
    return open(fd, "wb" if write else "rb", buffering=0)  # closed by its pipe transport


async def _connect_reader(
    loop: asyncio.AbstractEventLoop, fd: int, protocol: _ReadProtocol
) -> asyncio.ReadTransport:
    pipe = _pipe_file(fd, write=False)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    except BaseException:
        pipe.close()
        raise
    return transport


def _refuse_nul(profile: Profile, argv: Sequence[str], env: Mapping[str, str]) -> None:
    """A NUL byte cannot be passed to exec. asyncio's subprocess raises ValueError for one;
    uvloop's (``event_loop = uvloop``) would cut the string at it and start the agent with
    less than its task, so refuse it here, on either loop."""
    for text in (*argv, *env.keys(), *env.values()):
        if "\0" in text:
            raise AgentStartError(
                f"profile {profile.name!r}: cannot start {argv[0]!r}: embedded null byte"
            )


async def start_agent(
    profile: Profile,
    *,
    task: str,
    agent_id: str,
    attempt: int,
    extra_env: Mapping[str, str] | None = None,
    on_output: OutputCallback | None = None,
    tail_bytes: int = 65536,
) -> AgentProcess:
    """Start an agent for ``task`` in a new session and process group.

    ``{task}`` in the profile's argv is replaced by the task text; no shell is used.
    With ``task_on_stdin`` the task is written to the agent's stdin, which is then
    closed (an agent that does not read it is fine); otherwise stdin is /dev/null.
    ``on_output(stream_name, chunk)`` is called on the event loop for every chunk
    read; it must be cheap and must not raise (errors are logged once and ignored).

    Raises :class:`AgentStartError` if the program is missing or not executable,
    the cwd does not exist, the profile refuses the task (its ``task_pattern``, or a
    leading ``-`` where argv would read it as an option), a secret cannot be read (the
    message names its variable), or the task cannot be passed (e.g. NUL bytes, too long).
    """
    argv = command_line(profile, task)
    env = agent_environment(
        profile,
        task=task,
        agent_id=agent_id,
        attempt=attempt,
        extra_env=extra_env,
        secrets=read_secrets(profile),
    )
    _refuse_nul(profile, argv, env)
    stdout_tail = OutputTail(tail_bytes)
    stderr_tail = OutputTail(tail_bytes)
    loop = asyncio.get_running_loop()

    # Our own pipes (see the module docstring). os.pipe() fds are close-on-exec;
    # the child ends are dup2()ed onto 0/1/2 by subprocess.
    parent_fds: list[int] = []
    child_fds: list[int] = []
    try:
        out_r, out_w = os.pipe()
        parent_fds.append(out_r)
        child_fds.append(out_w)
        err_r, err_w = os.pipe()
        parent_fds.append(err_r)
        child_fds.append(err_w)
        in_r: int | None = None
        in_w: int | None = None
        if profile.task_on_stdin:
            in_r, in_w = os.pipe()
            parent_fds.append(in_w)
            child_fds.append(in_r)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=in_r if in_r is not None else subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=profile.cwd,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise AgentStartError(
                f"profile {profile.name!r}: program {argv[0]!r} not found"
            ) from exc
        except PermissionError as exc:
            raise AgentStartError(
                f"profile {profile.name!r}: program {argv[0]!r} is not executable"
            ) from exc
        except (OSError, ValueError) as exc:
            raise AgentStartError(
                f"profile {profile.name!r}: cannot start {argv[0]!r}: {exc}"
            ) from exc
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)

    start_ticks = read_start_ticks(proc.pid)
    identity = ProcessIdentity(
        pid=proc.pid,
        pgid=proc.pid,  # start_new_session: the agent leads its own group
        start_ticks=UNKNOWN_START_TICKS if start_ticks is None else start_ticks,
    )
    readers: list[tuple[asyncio.BaseTransport, _ReadProtocol]] = []
    stdin: tuple[asyncio.WriteTransport, _WriteProtocol] | None = None
    try:
        for fd, name, tail in ((out_r, "stdout", stdout_tail), (err_r, "stderr", stderr_tail)):
            protocol = _ReadProtocol(name, tail, on_output, proc.pid)
            parent_fds.remove(fd)  # _connect_reader owns it now
            readers.append((await _connect_reader(loop, fd, protocol), protocol))
        if in_w is not None:
            pipe = _pipe_file(in_w, write=True)
            parent_fds.remove(in_w)
            try:
                stdin = await loop.connect_write_pipe(_WriteProtocol, pipe)
            except BaseException:
                pipe.close()
                raise
            # Buffered by the transport, which closes the pipe once it is flushed
            # (or drops it quietly if the agent exits without reading: EPIPE).
            stdin[0].write(task.encode("utf-8", errors="replace"))
            stdin[0].close()
    except BaseException:
        signal_group(proc.pid, signal.SIGKILL)
        for fd in parent_fds:
            os.close(fd)
        for reader, _ in readers:
            reader.close()
        if stdin is not None and not stdin[1].lost:
            stdin[0].abort()
        raise

    _log.info(
        "agent_started",
        pid=proc.pid,
        profile=profile.name,
        agent_id=agent_id,
        attempt=attempt,
    )
    return AgentProcess(proc, identity, stdout_tail, stderr_tail, readers, stdin)
