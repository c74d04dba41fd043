"""The agent runtime against real processes (the synthetic agent and tests/agents/)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hubspoke.spoke.output import parse_receipt
from hubspoke.spoke.processes import (
    ProcessIdentity,
    identity_alive,
    kill_identity,
    read_start_ticks,
)
from hubspoke.spoke.profiles import Profile, synthetic_profile
from hubspoke.spoke.runtime import (
    DRAIN_TIMEOUT_S,
    AgentProcess,
    AgentStartError,
    start_agent,
)

AGENTS = Path(__file__).resolve().parent.parent / "agents"


def script_profile(script: str, *args: str, **kwargs: object) -> Profile:
    return Profile(
        name=script,
        argv=(sys.executable, str(AGENTS / script), *args),
        **kwargs,  # type: ignore[arg-type]  # test helper passes Profile fields through
    )


def python_profile(code: str, **kwargs: object) -> Profile:
    return Profile(name="py", argv=(sys.executable, "-c", code), **kwargs)  # type: ignore[arg-type]  # as above


def dead(pid: int) -> bool:
    """The pid is gone, or a zombie.

    Orphaned grandchildren are reaped by PID 1, which on some machines (this one:
    a micro-VM init) only reaps every second or two; a zombie is dead all the same.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return data[data.rfind(b")") + 2 :].startswith(b"Z")


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


async def eventually(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


class Lines:
    """Collects on_output chunks and finds lines in them."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

    def __call__(self, stream: str, chunk: bytes) -> None:
        self.chunks[stream].append(chunk)

    def text(self, stream: str = "stdout") -> str:
        return b"".join(self.chunks[stream]).decode()

    async def child_pid(self, within: float = 10.0) -> int:
        async def find() -> int:
            while True:
                for line in self.text().splitlines():
                    if line.startswith("CHILD "):
                        return int(line.split()[1])
                await asyncio.sleep(0.01)

        async with asyncio.timeout(within):
            return await find()


@pytest.fixture
async def agents() -> AsyncIterator[list[AgentProcess]]:
    """Agents started by a test; any still running at teardown are killed."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        await agent.terminate(0)


async def test_synthetic_success_with_progress_and_receipt(agents: list[AgentProcess]) -> None:
    lines = Lines()
    agent = await start_agent(
        synthetic_profile(),
        task="please do it duration=0.3 steps=3",
        agent_id="agent-1",
        attempt=1,
        on_output=lines,
    )
    agents.append(agent)
    assert agent.returncode is None
    assert identity_alive(agent.identity)
    assert agent.identity.pgid == agent.identity.pid == agent.pid
    assert os.getpgid(agent.pid) == agent.pid
    assert await agent.wait() == 0
    assert agent.returncode == 0
    assert not identity_alive(agent.identity)

    out = agent.stdout.text()
    assert out == lines.text()
    progress = [line for line in out.splitlines() if line.startswith("PROGRESS ")]
    assert progress == ["PROGRESS 33 step 1/3", "PROGRESS 66 step 2/3", "PROGRESS 100 step 3/3"]
    receipt = parse_receipt(out)
    assert receipt is not None
    assert receipt.status == "completed"
    assert receipt.verifications[0].name == "synthetic"
    assert receipt.verifications[0].status == "passed"
    assert agent.stderr.text() == ""


@pytest.mark.parametrize(
    ("task", "code", "status"),
    [
        ("fail duration=0 steps=1", 1, "failed"),
        ("duration=0 exit=7 receipt=blocked", 7, "blocked"),
        ("duration=0 exit=3 receipt=completed", 3, "completed"),
    ],
)
async def test_synthetic_exit_codes(task: str, code: int, status: str) -> None:
    agent = await start_agent(synthetic_profile(), task=task, agent_id="a", attempt=2)
    assert await agent.wait() == code
    receipt = parse_receipt(agent.stdout.text())
    assert receipt is not None
    assert receipt.status == status


async def test_synthetic_no_receipt_stderr_and_output() -> None:
    task = "duration=0 steps=0 receipt=none stderr=something_wrong output=100000"
    agent = await start_agent(synthetic_profile(), task=task, agent_id="a", attempt=1)
    assert await agent.wait() == 0
    assert agent.stderr.text() == "something_wrong\n"
    assert agent.stdout.total_bytes == 100_000
    assert parse_receipt(agent.stdout.text()) is None


async def test_synthetic_reads_task_from_stdin_without_env() -> None:
    # Run the synthetic module directly without HUBSPOKE_TASK: it falls back to stdin.
    code = (
        "import os, runpy, sys; del os.environ['HUBSPOKE_TASK']; "
        "sys.argv = ['synthetic']; "
        "runpy.run_module('hubspoke.spoke.synthetic', run_name='__main__')"
    )
    agent = await start_agent(
        python_profile(code),
        task="exit=4 duration=0 steps=1",
        agent_id="a",
        attempt=1,
    )
    assert await agent.wait() == 4


async def test_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSPOKE_SECRET", "do-not-leak")
    monkeypatch.setenv("SOME_SPOKE_VAR", "x")
    profile = python_profile(
        "import json, os; print(json.dumps(dict(os.environ)))", env={"PROFILE_VAR": "p"}
    )
    agent = await start_agent(
        profile,
        task="the task",
        agent_id="agent-9",
        attempt=3,
        extra_env={"HUBSPOKE_COMMAND_ID": "cmd-1"},
    )
    assert await agent.wait() == 0
    env = json.loads(agent.stdout.text())
    assert env["HUBSPOKE_TASK"] == "the task"
    assert env["HUBSPOKE_AGENT_ID"] == "agent-9"
    assert env["HUBSPOKE_ATTEMPT"] == "3"
    assert env["HUBSPOKE_COMMAND_ID"] == "cmd-1"
    assert env["PROFILE_VAR"] == "p"
    allowed = {
        "PATH",
        "HOME",
        "LANG",
        "PROFILE_VAR",
        "HUBSPOKE_TASK",
        "HUBSPOKE_AGENT_ID",
        "HUBSPOKE_ATTEMPT",
        "HUBSPOKE_COMMAND_ID",
        "LC_CTYPE",  # Python's own C-locale coercion may add it in the child
    }
    assert set(env) <= allowed


async def test_inherit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SPOKE_VAR", "x")
    profile = python_profile("import os; print(os.environ['SOME_SPOKE_VAR'])", inherit_env=True)
    agent = await start_agent(profile, task="t", agent_id="a", attempt=1)
    assert await agent.wait() == 0
    assert agent.stdout.text() == "x\n"


async def test_task_on_stdin_and_placeholder(tmp_path: Path) -> None:
    cat = Profile(name="cat", argv=("cat",))
    agent = await start_agent(cat, task="line one\nline two {x}", agent_id="a", attempt=1)
    assert await agent.wait() == 0
    assert agent.stdout.text() == "line one\nline two {x}"

    code = (
        "import os, sys; print(repr(sys.argv[1:])); print(repr(sys.stdin.read())); "
        "print(os.getcwd())"
    )
    echo = Profile(
        name="echo",
        argv=(sys.executable, "-c", code, "--task={task}", "{task}{task}"),
        task_pattern=r"[^-].*",  # "{task}{task}" leads an element: the profile needs a pattern
        task_on_stdin=False,
        cwd=str(tmp_path),
    )
    agent = await start_agent(echo, task="a b; $(rm -rf /)", agent_id="a", attempt=1)
    assert await agent.wait() == 0
    argv_line, stdin_line, cwd_line = agent.stdout.text().splitlines()
    assert argv_line == repr(["--task=a b; $(rm -rf /)", "a b; $(rm -rf /)a b; $(rm -rf /)"])
    assert stdin_line == repr("")  # /dev/null
    assert cwd_line == str(tmp_path)


async def test_large_task_on_stdin_that_is_never_read() -> None:
    # 100 KB: more than a pipe buffer, so the writer would block if it waited.
    profile = python_profile("import time; time.sleep(0.2)")
    agent = await start_agent(profile, task="x" * 100_000, agent_id="a", attempt=1)
    async with asyncio.timeout(10):
        assert await agent.wait() == 0


async def test_large_task_on_stdin_is_read_completely() -> None:
    profile = python_profile("import sys; print(len(sys.stdin.read()))")
    agent = await start_agent(profile, task="y" * 100_000, agent_id="a", attempt=1)
    assert await agent.wait() == 0
    assert agent.stdout.text() == "100000\n"


async def test_terminate_kills_group_with_grandchild_within_grace(
    agents: list[AgentProcess],
) -> None:
    lines = Lines()
    agent = await start_agent(
        synthetic_profile(),
        task="duration=60 spawn_child",
        agent_id="a",
        attempt=1,
        on_output=lines,
    )
    agents.append(agent)
    child = await lines.child_pid()
    assert os.getpgid(child) == agent.identity.pgid
    started = time.monotonic()
    await agent.terminate(grace_s=2.0)
    assert agent.returncode == -signal.SIGTERM
    assert await eventually(lambda: dead(child), within=2.0)
    assert time.monotonic() - started < 3.0
    await agent.terminate(grace_s=2.0)  # idempotent
    assert await agent.wait() == -signal.SIGTERM


async def test_agent_ignoring_sigterm_is_killed_after_grace(agents: list[AgentProcess]) -> None:
    lines = Lines()
    agent = await start_agent(
        script_profile("ignore_term.py"), task="t", agent_id="a", attempt=1, on_output=lines
    )
    agents.append(agent)
    assert await eventually(lambda: "READY" in lines.text(), within=10)
    started = time.monotonic()
    await agent.terminate(grace_s=0.5)
    elapsed = time.monotonic() - started
    assert agent.returncode == -signal.SIGKILL
    assert 0.5 <= elapsed < 2.5


async def test_synthetic_ignore_term_with_grandchild(agents: list[AgentProcess]) -> None:
    lines = Lines()
    agent = await start_agent(
        synthetic_profile(),
        task="duration=60 ignore_term spawn_child",
        agent_id="a",
        attempt=1,
        on_output=lines,
    )
    agents.append(agent)
    child = await lines.child_pid()
    await agent.terminate(grace_s=0.3)
    assert agent.returncode == -signal.SIGKILL
    assert await eventually(lambda: dead(child), within=2.0)


async def test_concurrent_wait_and_terminate(agents: list[AgentProcess]) -> None:
    agent = await start_agent(synthetic_profile(), task="duration=60", agent_id="a", attempt=1)
    agents.append(agent)
    waiters = [asyncio.create_task(agent.wait()) for _ in range(3)]
    await asyncio.sleep(0.2)
    await asyncio.gather(agent.terminate(1.0), agent.terminate(1.0))
    assert await asyncio.gather(*waiters) == [-signal.SIGTERM] * 3


async def test_cancelled_waiter_does_not_stop_watching(agents: list[AgentProcess]) -> None:
    agent = await start_agent(synthetic_profile(), task="duration=0.3", agent_id="a", attempt=1)
    agents.append(agent)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await agent.wait()
    assert await agent.wait() == 0


async def test_leader_exit_kills_rest_of_group() -> None:
    lines = Lines()
    agent = await start_agent(
        script_profile("orphan.py"), task="t", agent_id="a", attempt=1, on_output=lines
    )
    async with asyncio.timeout(5):
        # The grandchild holds stdout open: wait() returns anyway, having killed it.
        assert await agent.wait() == 0
    child = await lines.child_pid()
    assert await eventually(lambda: dead(child), within=2.0)


async def test_escaped_grandchild_does_not_hang_wait() -> None:
    lines = Lines()
    agent = await start_agent(
        script_profile("orphan.py", "--escape"), task="t", agent_id="a", attempt=1, on_output=lines
    )
    started = time.monotonic()
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S + 5):
            assert await agent.wait() == 0
        assert time.monotonic() - started < DRAIN_TIMEOUT_S + 3
        assert "CHILD " in agent.stdout.text()
    finally:
        child = await lines.child_pid()
        os.kill(child, signal.SIGKILL)


async def test_flood_keeps_tail_and_loop_responsive() -> None:
    size = 50_000_000
    received = 0

    def count(stream: str, chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ticker())
        agent = await start_agent(
            script_profile("flood.py", str(size)),
            task="t",
            agent_id="a",
            attempt=1,
            on_output=count,
            tail_bytes=4096,
        )
        try:
            assert await agent.wait() == 0
        finally:
            stop.set()
    assert agent.stdout.total_bytes == size + len(b"\nEND\n")
    assert received == agent.stdout.total_bytes
    assert len(agent.stdout.getvalue()) == 4096
    assert agent.stdout.truncated
    assert agent.stdout.text().endswith("\nEND\n")
    assert len(gaps) >= 5  # 50 MB take ~0.1 s on 2 cores
    assert max(gaps) < 0.2, f"event loop stalled for {max(gaps):.3f}s"


async def test_on_output_exception_does_not_break_pumps() -> None:
    def broken(stream: str, chunk: bytes) -> None:
        raise RuntimeError("boom")

    agent = await start_agent(
        synthetic_profile(), task="duration=0 steps=2", agent_id="a", attempt=1, on_output=broken
    )
    assert await agent.wait() == 0
    assert parse_receipt(agent.stdout.text()) is not None


async def test_no_fd_leak() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        agent = await start_agent(synthetic_profile(), task="duration=0", agent_id="a", attempt=1)
        await agent.wait()
    with pytest.raises(AgentStartError):
        await start_agent(
            Profile(name="x", argv=("/nonexistent/x",)), task="", agent_id="a", attempt=1
        )
    await asyncio.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_start_errors(tmp_path: Path) -> None:
    with pytest.raises(AgentStartError, match="not found"):
        await start_agent(
            Profile(name="x", argv=("no-such-program-hubspoke",)), task="", agent_id="a", attempt=1
        )
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    # Even root cannot exec a file without any execute bit.
    with pytest.raises(AgentStartError, match="not executable"):
        await start_agent(Profile(name="x", argv=(str(script),)), task="", agent_id="a", attempt=1)
    with pytest.raises(AgentStartError, match="working directory"):
        await start_agent(
            Profile(name="x", argv=("true",), cwd=str(tmp_path / "missing")),
            task="",
            agent_id="a",
            attempt=1,
        )
    with pytest.raises(AgentStartError, match="argv is empty"):
        await start_agent(Profile(name="x", argv=()), task="", agent_id="a", attempt=1)
    with pytest.raises(AgentStartError):
        await start_agent(synthetic_profile(), task="nul\x00byte", agent_id="a", attempt=1)
    with pytest.raises(AgentStartError):
        # A task travels in HUBSPOKE_TASK too; Linux limits one variable to 128 KiB.
        await start_agent(synthetic_profile(), task="z" * 200_000, agent_id="a", attempt=1)


def test_a_nul_byte_is_refused_on_uvloop_too() -> None:
    """uvloop's subprocess cuts a string at a NUL byte where asyncio's raises: the agent
    must not start with less than its task on either loop (``event_loop = uvloop``)."""
    from hubspoke import event_loop

    async def start() -> None:
        with pytest.raises(AgentStartError, match="embedded null byte"):
            await start_agent(synthetic_profile(), task="nul\x00byte", agent_id="a", attempt=1)

    event_loop.run(start(), "uvloop")


async def test_read_start_ticks_and_identity() -> None:
    ticks = read_start_ticks(os.getpid())
    assert isinstance(ticks, int)
    assert ticks > 0
    assert read_start_ticks(0) is None
    assert read_start_ticks(-1) is None
    me = ProcessIdentity(pid=os.getpid(), pgid=os.getpgrp(), start_ticks=ticks)
    assert identity_alive(me)
    assert not identity_alive(ProcessIdentity(me.pid, me.pgid, ticks + 1))
    assert not identity_alive(ProcessIdentity(me.pid, me.pgid + 1, ticks))


async def test_identity_of_dead_process() -> None:
    agent = await start_agent(synthetic_profile(), task="duration=0", agent_id="a", attempt=1)
    ident = agent.identity
    assert ident.start_ticks > 0
    await agent.wait()
    assert not identity_alive(ident)
    assert read_start_ticks(ident.pid) is None


async def test_read_start_ticks_with_odd_comm(tmp_path: Path) -> None:
    # comm (field 2) may contain spaces and parentheses.
    odd = tmp_path / "a) b (c"
    odd.symlink_to(sys.executable)
    profile = Profile(name="odd", argv=(str(odd), "-c", "import time; time.sleep(30)"))
    agent = await start_agent(profile, task="", agent_id="a", attempt=1)
    try:
        assert comm(agent.pid) == "a) b (c"
        ticks = read_start_ticks(agent.pid)
        assert ticks == agent.identity.start_ticks
        assert ticks is not None
        assert ticks >= read_start_ticks(os.getpid())  # type: ignore[operator]  # int here
        assert identity_alive(agent.identity)
    finally:
        await agent.terminate(0.5)


async def stray_group(task: str) -> tuple[asyncio.subprocess.Process, ProcessIdentity, int]:
    """A synthetic agent with a grandchild, started without the runtime (as if left
    behind by a crashed spoke)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubspoke.spoke.synthetic",
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, "HUBSPOKE_TASK": task},
        start_new_session=True,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        line = await proc.stdout.readline()
    child = int(line.split()[1])
    ticks = read_start_ticks(proc.pid)
    assert ticks is not None
    return proc, ProcessIdentity(proc.pid, proc.pid, ticks), child


async def test_kill_identity_of_stray_group() -> None:
    proc, ident, child = await stray_group("duration=60 spawn_child ignore_term")
    try:
        assert identity_alive(ident)
        started = time.monotonic()
        assert await kill_identity(ident, grace_s=0.3) is True
        assert time.monotonic() - started < 3
        assert await proc.wait() == -signal.SIGKILL
        assert await eventually(lambda: dead(child), within=2.0)
        assert not identity_alive(ident)
        assert await kill_identity(ident, grace_s=0.3) is False
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_kill_identity_sigterm_suffices() -> None:
    proc, ident, child = await stray_group("duration=60 spawn_child")
    try:
        assert await kill_identity(ident, grace_s=5) is True
        assert await proc.wait() == -signal.SIGTERM
        assert await eventually(lambda: dead(child), within=2.0)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_kill_identity_never_signals_a_reused_pid() -> None:
    proc, ident, child = await stray_group("duration=60 spawn_child")
    try:
        wrong = ProcessIdentity(ident.pid, ident.pgid, ident.start_ticks - 1)
        assert await kill_identity(wrong, grace_s=0.1) is False
        assert await kill_identity(ProcessIdentity(os.getpid(), 0, 1), grace_s=0.1) is False
        # Our own, live identity: its group is the test runner's, which is never signalled.
        me = ProcessIdentity(os.getpid(), os.getpgrp(), read_start_ticks(os.getpid()) or 0)
        assert identity_alive(me)
        assert await kill_identity(me, grace_s=0.1) is False
        await asyncio.sleep(0.1)
        assert proc.returncode is None
        assert not dead(child)
    finally:
        os.killpg(ident.pgid, signal.SIGKILL)
        await proc.communicate()
