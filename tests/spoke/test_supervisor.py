"""The agent supervisor (spoke/supervisor.sh, spoke/supervisor.py) with real processes: its
files, exits and kills, and a watcher that stops and a new one that re-attaches, as a
restarted spoked does."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from hubspoke.spoke import supervisor
from hubspoke.spoke.processes import process_alive
from hubspoke.spoke.profiles import Profile
from hubspoke.spoke.runtime import AgentStartError
from hubspoke.spoke.supervisor_cgroup import CgroupSupport, detect

NO_CGROUPS = CgroupSupport(None, "not in this test")


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - files and /proc: nothing to await
            await asyncio.sleep(0.05)


def sh(script: str, **kw: object) -> Profile:
    return Profile(name="sh", argv=("sh", "-c", script), task_on_stdin=False, **kw)  # type: ignore[arg-type]


async def start(
    root: Path, profile: Profile, agent_id: str = "a1", **kw: object
) -> supervisor.SupervisedAgent:
    return await supervisor.start_supervised(
        profile,
        task="T",
        agent_id=agent_id,
        attempt=1,
        root=root,
        cgroups=NO_CGROUPS,
        **kw,  # type: ignore[arg-type]
    )


async def test_output_and_exit_go_to_files_the_watcher_reads(tmp_path: Path) -> None:
    chunks: list[tuple[str, bytes]] = []
    profile = Profile(name="cat", argv=("sh", "-c", "echo out; cat; echo err >&2; sleep 1; exit 3"))
    agent = await supervisor.start_supervised(
        profile,
        task="the task\n",
        agent_id="a1",
        attempt=1,
        root=tmp_path,
        cgroups=NO_CGROUPS,
        on_output=lambda name, data: chunks.append((name, data)),
    )
    assert agent.supervisor.pid != agent.pid
    assert os.getsid(agent.pid) == agent.pid  # the agent leads a session and group of its own
    assert await agent.wait() == 3
    assert agent.stdout.text() == "out\nthe task\n"
    assert agent.stderr.text() == "err\n"
    assert b"".join(d for n, d in chunks if n == "stdout") == b"out\nthe task\n"
    assert agent.offsets == (len("out\nthe task\n"), len("err\n"))
    assert (agent.dir / "exit").read_text() == "3\n"
    agent.cleanup()
    assert not agent.dir.exists()


async def test_the_supervisor_outlives_a_watcher_that_stops_and_a_new_one_reads_on(
    tmp_path: Path,
) -> None:
    profile = sh("echo one; sleep 1; echo two; exit 5")
    first = await start(tmp_path, profile)
    await until(lambda: first.offsets[0] > 0)
    first.detach()  # spoked dies: nothing of it holds the agent
    offsets = first.offsets
    assert process_alive(first.supervisor.pid, first.supervisor.start_ticks)
    found = supervisor.locate(tmp_path, "a1", 1, first.supervisor.start_ticks)
    assert found is not None
    assert found.exit_status is None
    assert found.agent is not None
    seen: list[bytes] = []
    again = supervisor.SupervisedAgent(
        found.dir,
        found.supervisor,
        found.agent,
        offsets=offsets,
        on_output=lambda _, data: seen.append(data),
    )
    assert await again.wait() == 5
    assert b"".join(seen) == b"two\n"  # on from the recorded offset, nothing twice
    assert again.stdout.text() == "one\ntwo\n"  # the whole tail, from the file


async def test_an_exit_while_nobody_watched_is_found(tmp_path: Path) -> None:
    agent = await start(tmp_path, sh("echo done; exit 7"))
    agent.detach()
    await until(lambda: (agent.dir / "exit").exists())
    found = supervisor.locate(tmp_path, "a1", 1, None)
    assert found is not None
    assert found.exit_status == 7
    assert found.agent is not None
    late = supervisor.SupervisedAgent(found.dir, found.supervisor, found.agent)
    assert await late.wait() == 7
    assert late.stdout.text() == "done\n"


async def test_terminate_reaches_the_group_and_the_supervisor_records_it(tmp_path: Path) -> None:
    agent = await start(tmp_path, sh("sleep 60 & sleep 60", kill_grace_s=1))
    await agent.terminate(1.0)
    assert agent.returncode == -signal.SIGTERM
    assert (agent.dir / "exit").read_text() == f"{128 + signal.SIGTERM}\n"
    await asyncio.sleep(0.2)
    assert not process_alive(agent.pid, agent.identity.start_ticks)


async def test_a_stale_or_foreign_pid_is_not_a_supervisor(tmp_path: Path) -> None:
    agent = await start(tmp_path, sh("sleep 60"))
    try:
        assert supervisor.locate(tmp_path, "a1", 1, agent.supervisor.start_ticks + 1) is None
        (agent.dir / "sup").write_text(f"{os.getpid()}\n")  # alive, but not its supervisor
        assert supervisor.locate(tmp_path, "a1", 1, None) is None
        assert supervisor.locate(tmp_path, "nobody", 1, None) is None
    finally:
        await agent.terminate(0.5)


async def test_a_killed_supervisor_ends_its_agent(tmp_path: Path) -> None:
    agent = await start(tmp_path, sh("sleep 60"))
    agent.detach()
    found = supervisor.locate(tmp_path, "a1", 1, agent.supervisor.start_ticks)
    assert found is not None
    assert found.agent is not None
    os.kill(agent.supervisor.pid, signal.SIGKILL)
    watcher = supervisor.SupervisedAgent(found.dir, found.supervisor, found.agent)
    assert await asyncio.wait_for(watcher.wait(), 5) == -signal.SIGKILL
    await asyncio.sleep(0.2)
    assert not process_alive(found.agent.pid, found.agent.start_ticks)


async def test_a_missing_program_fails_the_start_as_without_a_supervisor(tmp_path: Path) -> None:
    with pytest.raises(AgentStartError, match="not found"):
        await start(tmp_path, Profile(name="x", argv=("no-such-program-here",)))
    assert not os.listdir(tmp_path)


def test_exit_codes_of_signals_are_negative() -> None:
    assert supervisor.code_of(0) == 0
    assert supervisor.code_of(3) == 3
    assert supervisor.code_of(137) == -9
    assert supervisor.code_of(255) == 255


async def test_a_cgroup_per_agent_where_the_host_allows_one(tmp_path: Path) -> None:
    support = detect()
    if support.base is None:
        pytest.skip(f"no cgroup for agents on this host: {support.reason}")
    agent = await supervisor.start_supervised(
        sh("setsid sleep 60 & sleep 60"),
        task="",
        agent_id="cg",
        attempt=1,
        root=tmp_path,
        cgroups=support,
    )
    cgroup = Path((agent.dir / "cgroup").read_text().strip())
    await until(lambda: len((cgroup / "cgroup.procs").read_text().split()) >= 3)
    await agent.terminate(0.5)
    await asyncio.sleep(0.3)
    assert not (cgroup / "cgroup.procs").read_text().split()  # the setsid one too
    agent.cleanup()


async def test_the_agent_runs_in_its_profile_cwd(tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    agent = await start(tmp_path / "state", Profile(name="pwd", argv=("pwd",), cwd=str(workdir)))
    assert await agent.wait() == 0
    assert agent.stdout.text() == f"{workdir}\n"
