"""Profile secrets: the ``secrets`` table, the owner-only check, and how the runtime reads
them into the agent's environment (the end-to-end test is tests/e2e/test_secrets.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hubspoke.spoke.profiles import Profile, ProfileConfigError, profile_from_mapping
from hubspoke.spoke.runtime import AgentStartError, agent_environment, read_secrets, start_agent


def _secret(path: Path, data: bytes, mode: int = 0o600) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_a_profile_names_its_secrets(tmp_path: Path) -> None:
    path = _secret(tmp_path / "gh", b"t0ken\n")
    p = profile_from_mapping("ci", {"argv": ["true"], "secrets": {"GITHUB_TOKEN": path}})
    assert dict(p.secrets) == {"GITHUB_TOKEN": path}
    assert "t0ken" not in repr(p)
    with pytest.raises(TypeError):
        p.secrets["X"] = "/y"  # type: ignore[index]  # asserting the mapping is read-only


@pytest.mark.parametrize(
    ("secrets", "problem"),
    [
        (["GITHUB_TOKEN=/x"], "must be a table"),
        ({"GITHUB_TOKEN": 5}, "must be a table"),
        ({"": "/x"}, "invalid variable name"),
        ({"A=B": "/x"}, "invalid variable name"),
        ({"HUBSPOKE_TASK": "/x"}, "HUBSPOKE_"),
        ({"MODE": "/x"}, "also set in env"),
        ({"TOKEN": "relative/path"}, "must be absolute"),
        ({"TOKEN": "/a\x00b"}, "NUL"),
    ],
)
def test_bad_secret_tables_are_refused(secrets: object, problem: str) -> None:
    with pytest.raises(ProfileConfigError, match="profile 'ci': key 'secrets'") as info:
        profile_from_mapping("ci", {"argv": ["true"], "env": {"MODE": "x"}, "secrets": secrets})
    assert problem in str(info.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_a_secret_file_group_or_others_may_use_refuses_the_profile(
    tmp_path: Path, mode: int
) -> None:
    path = _secret(tmp_path / "gh", b"t0ken", mode)
    with pytest.raises(ProfileConfigError) as info:
        profile_from_mapping("ci", {"argv": ["true"], "secrets": {"GITHUB_TOKEN": path}})
    message = str(info.value)
    assert message.startswith("profile 'ci': key 'secrets' names GITHUB_TOKEN")
    assert path in message
    assert f"{mode:04o}" in message
    assert "t0ken" not in message


def test_a_missing_secret_file_refuses_the_profile(tmp_path: Path) -> None:
    with pytest.raises(ProfileConfigError, match="secret file not found"):
        profile_from_mapping("ci", {"argv": ["true"], "secrets": {"T": str(tmp_path / "no")}})


def test_values_are_read_at_each_start_with_one_newline_dropped(tmp_path: Path) -> None:
    path = tmp_path / "gh"
    p = Profile(name="ci", argv=("true",), secrets={"T": _secret(path, b"one\n")})
    assert read_secrets(p) == {"T": "one"}
    _secret(path, b"two\r\n")
    assert read_secrets(p) == {"T": "two"}
    _secret(path, b"three\n\n")
    assert read_secrets(p) == {"T": "three\n"}


@pytest.mark.parametrize(
    ("data", "mode", "problem"),
    [
        (b"t0ken", 0o644, "its file is not owner-only"),
        (b"t0k\x00en", 0o600, "NUL"),
        (b"t0k\xffen", 0o600, "not UTF-8"),
        (b"t" * (64 * 1024 + 1), 0o600, "larger than"),
    ],
)
def test_an_unusable_secret_fails_the_start_naming_the_variable(
    tmp_path: Path, data: bytes, mode: int, problem: str
) -> None:
    p = Profile(
        name="ci", argv=("true",), secrets={"GITHUB_TOKEN": _secret(tmp_path / "s", data, mode)}
    )
    with pytest.raises(AgentStartError) as info:
        read_secrets(p)
    message = str(info.value)
    assert message.startswith("profile 'ci': secret GITHUB_TOKEN cannot be read")
    assert problem in message
    assert "t0k" not in message
    assert "ttt" not in message


def test_a_secret_removed_after_start_up_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "s"
    p = Profile(name="ci", argv=("true",), secrets={"GITHUB_TOKEN": _secret(path, b"x")})
    path.unlink()
    with pytest.raises(
        AgentStartError, match="secret GITHUB_TOKEN cannot be read: its file is missing"
    ):
        read_secrets(p)


@pytest.mark.parametrize("inherit", [False, True])
def test_secrets_are_added_explicitly_whatever_inherit_env_says(
    inherit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "the spoke's own")
    p = Profile(name="ci", argv=("true",), inherit_env=inherit, secrets={"GITHUB_TOKEN": "/x"})
    env = agent_environment(p, task="t", agent_id="a1", attempt=1, secrets={"GITHUB_TOKEN": "s"})
    assert env.get("GITHUB_TOKEN") == "s"
    without = agent_environment(p, task="t", agent_id="a1", attempt=1)
    assert ("GITHUB_TOKEN" in without) is inherit


async def test_the_agent_process_sees_the_secret(tmp_path: Path) -> None:
    p = Profile(
        name="ci",
        argv=("sh", "-c", 'test "$GITHUB_TOKEN" = "s3cret" && echo ok'),
        secrets={"GITHUB_TOKEN": _secret(tmp_path / "s", b"s3cret\n")},
    )
    proc = await start_agent(p, task="", agent_id="a1", attempt=1)
    assert await proc.wait() == 0
    assert proc.stdout.getvalue() == b"ok\n"
    assert os.environ.get("GITHUB_TOKEN") is None  # the spoke's own environment has none
