"""A supervisor reports its agent's pid on a pipe (spoke/supervisor_report.py), so spoked learns
it without polling the pid file, and the pipe does not outlive the start (issue 13,
spawn-to-running). Real supervisors (spoke/supervisor.sh), real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from hubspoke.spoke import supervisor
from hubspoke.spoke.profiles import Profile
from hubspoke.spoke.runtime import AgentStartError
from hubspoke.spoke.supervisor_cgroup import CgroupSupport

NO_CGROUPS = CgroupSupport(None, "not in this test")


async def start(root: Path, profile: Profile) -> supervisor.SupervisedAgent:
    return await supervisor.start_supervised(
        profile, task="T", agent_id="a1", attempt=1, root=root, cgroups=NO_CGROUPS
    )


async def test_the_pid_comes_through_the_pipe_not_the_pid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """spoked never reads the pid file to start an agent (a restarted spoked still can)."""
    read = supervisor._read_line_int

    def no_pid_file(path: Path) -> int | None:
        assert path.name != "pid", "the start polled the pid file"
        return read(path)

    monkeypatch.setattr(supervisor, "_read_line_int", no_pid_file)
    agent = await start(tmp_path, Profile(name="s", argv=("sleep", "30"), task_on_stdin=False))
    try:
        assert read(agent.dir / "pid") == agent.pid  # the file still says so, for a restart
        assert os.getsid(agent.pid) == agent.pid  # and it leads its own session already
    finally:
        await agent.terminate(1.0)
        agent.cleanup()


def _pipes() -> set[str]:
    """This process's open pipe fds (their targets)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("pipe:"):
                found.add(target)
    return found


async def test_the_pipe_does_not_outlive_the_start(tmp_path: Path) -> None:
    """spoked keeps no end of it, and the supervisor points its stdout at /dev/null once it
    reported: nothing ties a running supervisor to this spoked."""
    before = _pipes()
    agent = await start(tmp_path, Profile(name="s", argv=("sleep", "30"), task_on_stdin=False))
    try:
        assert _pipes() <= before
        fd1 = f"/proc/{agent.supervisor.pid}/fd/1"
        async with asyncio.timeout(5):
            while os.readlink(fd1) != os.devnull:  # noqa: ASYNC110 - /proc: nothing to await
                await asyncio.sleep(0.01)
    finally:
        await agent.terminate(1.0)
        agent.cleanup()


async def test_a_supervisor_that_ends_without_a_report_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EOF on the pipe without a pid: START_FAILED at once, not after PID_WAIT_S."""
    script = tmp_path / "broken.sh"
    script.write_text("echo broken >&2\nexit 3\n")
    monkeypatch.setattr(supervisor, "SCRIPT", script)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(AgentStartError, match="broken"):
        await start(tmp_path / "root", Profile(name="s", argv=("sleep", "30"), task_on_stdin=False))
    assert loop.time() - t0 < supervisor.PID_WAIT_S / 2
