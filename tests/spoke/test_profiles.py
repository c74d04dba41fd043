from __future__ import annotations

import dataclasses
import sys

import pytest

from hubspoke.spoke.profiles import (
    Profile,
    ProfileConfigError,
    profile_from_mapping,
    shell_profile,
    synthetic_profile,
)


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
        },
    )
    assert p == Profile(
        name="coder",
        argv=("/usr/bin/agent", "--task", "{task}"),
        cwd="/srv/work",
        env={"MODE": "fast"},
        inherit_env=True,
        task_on_stdin=False,
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
    assert isinstance(info.value, ValueError)


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
