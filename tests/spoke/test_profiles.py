from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from hubspoke.errors import ConfigError
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2, spoke_service_pb2
from hubspoke.spoke.config import SpokeConfigError
from hubspoke.spoke.profiles import (
    Profile,
    ProfileConfigError,
    TaskRefusedError,
    check_task,
    exposed_element,
    profile_from_mapping,
    shell_profile,
    synthetic_profile,
    task_refusal,
)
from hubspoke.spoke.runtime import AgentStartError, start_agent

from .conftest import SPOKE, Peers, spoke_config


def test_synthetic_profile_is_builtin() -> None:
    p = synthetic_profile()
    assert p.name == "synthetic"
    assert p.argv == (sys.executable, "-m", "hubspoke.spoke.synthetic")
    assert p.cwd is None
    assert p.retry_safe is True
    assert p.kill_grace_s == 2.0
    assert p.timeout_s == 600.0
    assert p.task_on_stdin is True
    assert p.unsafe is False


def test_shell_profile_is_unsafe_and_takes_task_in_argv() -> None:
    p = shell_profile()
    assert p.name == "shell"
    assert p.argv == ("sh", "-c", "{task}")
    assert p.task_on_stdin is False
    assert p.unsafe is True


def test_profile_defaults_and_immutability() -> None:
    env = {"A": "1"}
    p = Profile(name="x", argv=("true",), cwd=None, env=env)
    env["A"] = "2"
    assert p.env == {"A": "1"}
    assert p.inherit_env is False
    assert p.task_on_stdin is True
    assert p.timeout_s == 3600.0
    assert p.kill_grace_s == 5.0
    assert p.max_attempts == 1
    assert p.retry_safe is False
    assert p.max_concurrency == 0
    assert p.unsafe is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "y"  # type: ignore[misc]  # asserting that frozen really forbids it
    with pytest.raises(TypeError):
        p.env["A"] = "3"  # type: ignore[index]  # asserting the mapping is read-only
    assert hash(p) == hash(Profile(name="x", argv=("true",), env={"B": "2"}))


def test_full_table() -> None:
    p = profile_from_mapping(
        "coder",
        {
            "argv": ["/usr/bin/agent", "--task", "{task}"],
            "cwd": "/srv/work",
            "env": {"MODE": "fast"},
            "inherit_env": True,
            "task_on_stdin": False,
            "timeout_seconds": 90,
            "kill_grace_seconds": 0.5,
            "max_attempts": 3,
            "retry_safe": True,
            "max_concurrency": 2,
            "unsafe": False,
            "task_pattern": "[a-z ]+",
        },
    )
    assert p == Profile(
        name="coder",
        argv=("/usr/bin/agent", "--task", "{task}"),
        cwd="/srv/work",
        env={"MODE": "fast"},
        inherit_env=True,
        task_on_stdin=False,
        task_pattern="[a-z ]+",
        timeout_s=90.0,
        kill_grace_s=0.5,
        max_attempts=3,
        retry_safe=True,
        max_concurrency=2,
        unsafe=False,
    )
    assert isinstance(p.timeout_s, float)


def test_minimal_table_gets_defaults() -> None:
    p = profile_from_mapping("echo", {"argv": ["echo"]})
    assert p == Profile(name="echo", argv=("echo",))


def test_synthetic_empty_table_is_builtin() -> None:
    assert profile_from_mapping("synthetic", {}) == synthetic_profile()


def test_synthetic_table_overrides_builtin() -> None:
    p = profile_from_mapping("synthetic", {"max_concurrency": 4})
    assert p == dataclasses.replace(synthetic_profile(), max_concurrency=4)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": "echo hi"}, "argv"),
        ({"argv": ["echo", 3]}, "argv"),
        ({"argv": [""]}, "argv"),
        ({"argv": ["echo", "a\x00b"]}, "argv"),
        ({"argv": ["echo"], "comand": "x"}, "comand"),
        ({"argv": ["echo"], "cwd": 5}, "cwd"),
        ({"argv": ["echo"], "cwd": ""}, "cwd"),
        ({"argv": ["echo"], "env": ["A=1"]}, "env"),
        ({"argv": ["echo"], "env": {"A": 1}}, "env"),
        ({"argv": ["echo"], "env": {"A=B": "1"}}, "env"),
        ({"argv": ["echo"], "inherit_env": "yes"}, "inherit_env"),
        ({"argv": ["echo"], "task_on_stdin": 1}, "task_on_stdin"),
        ({"argv": ["echo"], "retry_safe": None}, "retry_safe"),
        ({"argv": ["echo"], "unsafe": "false"}, "unsafe"),
        ({"argv": ["echo"], "timeout_seconds": 0}, "timeout_seconds"),
        ({"argv": ["echo"], "timeout_seconds": -1}, "timeout_seconds"),
        ({"argv": ["echo"], "timeout_seconds": "60"}, "timeout_seconds"),
        ({"argv": ["echo"], "timeout_seconds": float("inf")}, "timeout_seconds"),
        ({"argv": ["echo"], "timeout_seconds": True}, "timeout_seconds"),
        ({"argv": ["echo"], "kill_grace_seconds": -0.1}, "kill_grace_seconds"),
        ({"argv": ["echo"], "kill_grace_seconds": float("nan")}, "kill_grace_seconds"),
        ({"argv": ["echo"], "max_attempts": 0}, "max_attempts"),
        ({"argv": ["echo"], "max_attempts": 1.5}, "max_attempts"),
        ({"argv": ["echo"], "max_attempts": True}, "max_attempts"),
        ({"argv": ["echo"], "max_concurrency": -1}, "max_concurrency"),
        ({"argv": ["echo"], "task_pattern": "("}, "task_pattern"),
        ({"argv": ["echo"], "task_pattern": ""}, "task_pattern"),
        ({"argv": ["echo"], "task_pattern": 3}, "task_pattern"),
        ({"argv": ["echo"], "task_pattern": "a\x00"}, "task_pattern"),
        ({"argv": ["pytest", "-q", "{task}"]}, "argv"),
        ({"synthetic": True}, "synthetic"),
    ],
)
def test_invalid_tables(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ProfileConfigError) as info:
        profile_from_mapping("my-agent", raw)
    message = str(info.value)
    assert "'my-agent'" in message
    assert repr(key) in message
    assert "\n" not in message
    assert isinstance(info.value, ConfigError)


def test_synthetic_table_is_validated_too() -> None:
    with pytest.raises(ProfileConfigError, match=r"'synthetic'.*'max_attempts'"):
        profile_from_mapping("synthetic", {"max_attempts": 0})
    with pytest.raises(ProfileConfigError, match=r"'synthetic'.*'bogus'"):
        profile_from_mapping("synthetic", {"bogus": 1})


def test_bad_name_and_non_table() -> None:
    with pytest.raises(ProfileConfigError):
        profile_from_mapping("", {"argv": ["echo"]})
    with pytest.raises(ProfileConfigError, match="must be a table"):
        profile_from_mapping("x", ["echo"])  # type: ignore[arg-type]  # a TOML array by mistake


# --- task placement: argv option injection ----------------------------------------------

AGENT = str(Path(__file__).resolve().parents[1] / "agents" / "pytest_like.py")
TEST_PATH = r"tests/[A-Za-z0-9_/]+\.py"


@pytest.mark.parametrize(
    "argv",
    [
        ("pytest", "-q", "{task}"),
        ("pytest", "--task", "{task}"),  # the generic rule cannot know --task takes a value
        ("pytest", "{task}.py"),
        ("pytest", "{task}{task}"),
        ("{task}",),
        ("--", "{task}"),  # argv[0] is the program, not an end of options
        ("pytest", "-q", "{task}", "--", "more"),
    ],
)
def test_an_argv_that_exposes_the_task_is_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ProfileConfigError) as info:
        profile_from_mapping("tests", {"argv": list(argv), "task_on_stdin": False})
    message = str(info.value)
    assert message.startswith("profile 'tests': key 'argv' element ")
    assert "task_pattern" in message
    assert "\n" not in message
    with pytest.raises(ProfileConfigError, match="'tests'"):
        Profile(name="tests", argv=argv)


@pytest.mark.parametrize(
    "argv",
    [
        ("pytest", "-q", "--", "{task}"),
        ("pytest", "--", "a", "{task}.py"),
        ("pytest", "--task={task}"),
        ("pytest", "-k", "x{task}"),
        ("pytest",),
    ],
)
def test_placements_that_do_not_expose_the_task(argv: tuple[str, ...]) -> None:
    p = profile_from_mapping("tests", {"argv": list(argv)})
    assert exposed_element(p.argv) is None
    assert task_refusal(p, "--junitxml=/tmp/x") is None


def test_a_pattern_or_unsafe_lets_a_profile_expose_its_task() -> None:
    exposing = ["pytest", "-q", "{task}"]
    p = profile_from_mapping("tests", {"argv": exposing, "task_pattern": TEST_PATH})
    assert exposed_element(p.argv) == 2
    assert task_refusal(p, "tests/test_a.py") is None
    assert (
        task_refusal(p, "tests/../x.py")
        == "task does not match the task_pattern of profile 'tests'"
    )
    assert task_refusal(p, "tests/a.py --junitxml=x") is not None  # fullmatch, not match
    # A leading '-' in an exposed place is refused whatever the pattern admits.
    loose = profile_from_mapping("loose", {"argv": exposing, "task_pattern": ".*"})
    assert task_refusal(loose, "x --junitxml=y") is None
    assert task_refusal(loose, "--junitxml=y") == (
        "profile 'loose' would pass a task starting with '-' to its program as an option"
    )
    shell = shell_profile()
    assert exposed_element(shell.argv) == 2
    assert task_refusal(shell, "echo hi") is None
    assert task_refusal(shell, "-x") is not None


def test_a_pattern_binds_every_task_of_the_profile() -> None:
    stdin = profile_from_mapping("stdin", {"argv": ["agent"], "task_pattern": "[a-z]+"})
    assert task_refusal(stdin, "abc") is None
    assert task_refusal(stdin, "abc1") is not None
    assert task_refusal(stdin, "") is not None
    assert task_refusal(synthetic_profile(), "--anything at all") is None
    with pytest.raises(TaskRefusedError) as info:
        check_task(stdin, "ABC")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_runtime_checks_the_task_again(tmp_path: Path) -> None:
    p = profile_from_mapping(
        "tests", {"argv": [sys.executable, AGENT, "-q", "{task}"], "task_pattern": ".*"}
    )
    report = tmp_path / "report.xml"
    with pytest.raises(AgentStartError, match="starting with '-'"):
        await start_agent(p, task=f"--junitxml={report}", agent_id="a", attempt=1)
    assert not report.exists()
    agent = await start_agent(p, task="tests/test_a.py", agent_id="a", attempt=1)
    assert await agent.wait() == 0
    assert agent.stdout.text() == "PASSED tests/test_a.py\n"


def _pytest_profiles(cwd: Path) -> dict[str, Any]:
    base = {"task_on_stdin": False, "cwd": str(cwd), "kill_grace_seconds": 1.0}
    return {
        "synthetic": {},
        "pattern": {
            **base,
            "argv": [sys.executable, AGENT, "-q", "{task}"],
            "task_pattern": TEST_PATH,
        },
        "dashdash": {**base, "argv": [sys.executable, AGENT, "-q", "--", "{task}"]},
    }


async def test_an_injected_option_is_refused_before_anything_is_queued(
    start_spoke: Any, tmp_path: Path
) -> None:
    _, client = await start_spoke(profiles=_pytest_profiles(tmp_path))
    report = tmp_path / "out" / "report.xml"
    report.parent.mkdir()
    for task in (f"--junitxml={report}", f"tests/a.py --junitxml={report}", "-p evil"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.spawn(task, profile="pattern", command_id=f"inj-{len(task)}")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, task
        assert "task_pattern" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.get(f"inj-{len(task)}")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert list((await client.list()).agent_page.agents) == []

    ok = await client.spawn("tests/test_a.py", profile="pattern")
    done = await client.wait_state(ok.agent.agent_id, "SUCCEEDED", "FAILED")
    assert done.state == agent_pb2.Agent.STATE_SUCCEEDED, done.stderr_tail
    assert done.stdout_tail == "PASSED tests/test_a.py\n"

    # After the profile's own "--" the same text is a test path, not an option.
    after = await client.spawn(f"--junitxml={report}", profile="dashdash")
    done = await client.wait_state(after.agent.agent_id, "SUCCEEDED", "FAILED")
    assert done.state == agent_pb2.Agent.STATE_SUCCEEDED, done.stderr_tail
    assert done.stdout_tail == f"PASSED --junitxml={report}\n"
    assert not report.exists()


def test_a_spoke_whose_profile_exposes_its_task_refuses_to_start(
    peers: Peers, redis_url: str, tmp_path: Path
) -> None:
    profiles = _pytest_profiles(tmp_path)
    del profiles["pattern"]["task_pattern"]
    with pytest.raises(SpokeConfigError, match=r"profile 'pattern': key 'argv'"):
        spoke_config(peers, redis_url, profiles=profiles)

    config = tmp_path / "spoke.toml"
    config.write_text(
        f'name = "{SPOKE}"\n'
        'listen = "127.0.0.1:0"\n'
        f'key_file = "{peers.key_dir / f"{SPOKE}.key"}"\n'
        f'trust_file = "{peers.trust_file}"\n'
        f'policy_file = "{peers.trust_file.parent / "policy.toml"}"\n'
        f'redis_url = "{redis_url}"\n'
        "\n[profiles.tests]\n"
        'argv = ["python", "-m", "pytest", "-q", "{task}"]\n'
        "task_on_stdin = false\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "hubspoke.spoke", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "profile 'tests': key 'argv' element 4 ('{task}')" in done.stderr
    assert "serving" not in done.stdout


async def _queue_call(client: Any, rpc: str, body: str, msg: Any) -> None:
    request = getattr(spoke_service_pb2, f"SpokeService{rpc}Request")
    await getattr(client.stub, rpc)(request(command=client.command(body, msg)), timeout=10)


async def test_a_queued_task_the_config_no_longer_allows_fails_to_start(
    start_spoke: Any, tmp_path: Path
) -> None:
    # Stored under a looser pattern, started by a spoke whose pattern refuses it: the worker's
    # own check (defence in depth) fails it instead of running it.
    loose = _pytest_profiles(tmp_path)
    loose["pattern"]["task_pattern"] = r"tests/.*"
    first, client = await start_spoke(profiles=loose)
    await _queue_call(client, "PauseQueue", "pause_queue", command_pb2.PauseQueueBody())
    queued = await client.spawn("tests/../../etc/x.py", profile="pattern")
    await first.shutdown()

    _, client = await start_spoke(profiles=_pytest_profiles(tmp_path))
    await _queue_call(client, "ResumeQueue", "resume_queue", command_pb2.ResumeQueueBody())
    done = await client.wait_state(queued.agent.agent_id, "FAILED", "SUCCEEDED")
    assert done.state == agent_pb2.Agent.STATE_FAILED
    assert done.reason == "START_FAILED"
    assert "task_pattern" in done.stderr_tail
    assert done.stdout_tail == ""
