"""hubctl without a hub: keygen, parsing, usage and config errors, exit codes, JSON shape."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import keys
from hubspoke.gen.federation.v1 import agent_pb2, command_pb2
from hubspoke.hub import cli, cli_parser
from hubspoke.hub.federation_files import write_federation

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HUBCTL_CONFIG", "HUBCTL_HUB", "HUBCTL_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def refused_address() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- keygen ---------------------------------------------------------------------------------


def test_keygen_writes_a_keypair_and_prints_the_public_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "keygen", "--out", str(tmp_path / "k"), "--name", "alice")
    assert (code, err) == (0, "")
    public, name = out.split()
    assert name == "alice"
    priv = tmp_path / "k" / "alice.key"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    key = keys.load_private(priv, "alice")
    assert keys.encode_public(key.public) == public
    assert keys.encode_public(keys.load_public_file(tmp_path / "k" / "alice.pub")) == public


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keygen", "--out", str(tmp_path), "--name", "bob")[0] == 0
    before = (tmp_path / "bob.key").read_bytes()
    code, out, err = run(capsys, "keygen", "--out", str(tmp_path), "--name", "bob")
    assert code == 2
    assert out == ""
    assert err.startswith("Error: ")
    assert "already exists" in err
    assert (tmp_path / "bob.key").read_bytes() == before


def test_keygen_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keygen", "--out", str(tmp_path), "--name", "carol", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["name"] == "carol"
    assert doc["public_key"].startswith("ed25519:")
    assert doc["key_id"].startswith("carol/")
    assert Path(doc["key_file"]) == tmp_path / "carol.key"


def test_keygen_rejects_a_name_that_is_not_a_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "keygen", "--out", str(tmp_path), "--name", "../evil")
    assert code == 2
    assert "Error: --name" in err


# -- parsing --------------------------------------------------------------------------------


def test_timeout_before_the_verb_is_the_rpc_deadline_and_after_spawn_the_run_time() -> None:
    p = cli_parser.build_parser()
    a = p.parse_args(
        ["--timeout", "3", "spawn", "--spoke", "s", "--timeout", "30", "--", "a", "-b"]
    )
    assert (a.rpc_timeout, a.agent_timeout, a.task) == (3.0, 30.0, ["a", "-b"])
    b = p.parse_args(["spawn", "--spoke", "s", "--run-timeout", "7", "--label", "k=v", "t"])
    assert (b.rpc_timeout, b.agent_timeout, b.labels) == (None, 7.0, [("k", "v")])
    c = p.parse_args(["status", "a1", "--timeout", "4", "--json"])
    assert (c.rpc_timeout, c.json) == (4.0, True)
    d = p.parse_args(["--json", "list", "--state", "running", "--state", "STATE_QUEUED"])
    assert d.json is True
    assert d.states == [agent_pb2.Agent.STATE_RUNNING, agent_pb2.Agent.STATE_QUEUED]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        ([], "required: VERB"),
        (["frobnicate"], "invalid choice"),
        (["spawn", "--spoke", "s"], "required: TASK"),
        (["spawn", "--", "task"], "--spoke"),
        (["spawn", "--spoke", "s", "--priority", "11", "--", "t"], "priority must be 1-10"),
        (["spawn", "--spoke", "s", "--label", "novalue", "--", "t"], "key=value"),
        (["spawn", "--spoke", "s", "--timeout", "-1", "--", "t"], "positive number"),
        (["list", "--state", "sleeping"], "unknown state"),
        (["--timeout", "0", "spokes"], "positive number"),
        (["status"], "AGENT"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ")
    assert match in lines[0]


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for needle in ("0  ok", "2  usage or config error", "3  not found", "4  not allowed", "5  hub"):
        assert needle in out


# -- config errors --------------------------------------------------------------------------


def test_no_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "spokes")
    assert code == 2
    assert err == "Error: no hubctl config: pass --config FILE or set HUBCTL_CONFIG\n"


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--config", str(tmp_path / "nope.toml"), "spokes")
    assert code == 2
    assert "config file not found" in err


def test_config_from_env_with_an_unsafe_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_federation(tmp_path, [], "127.0.0.1:1", "redis://127.0.0.1:1/0")
    (files.keys_dir / "operator.key").chmod(0o644)
    monkeypatch.setenv("HUBCTL_CONFIG", str(files.hubctl_config))
    code, _, err = run(capsys, "list")
    assert code == 2
    assert "chmod 600" in err


def test_bad_timeout_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_federation(tmp_path, [], "127.0.0.1:1", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("HUBCTL_TIMEOUT", "soon")
    code, _, err = run(capsys, "--config", str(files.hubctl_config), "spokes")
    assert code == 2
    assert "HUBCTL_TIMEOUT" in err


# -- exit codes without a hub ---------------------------------------------------------------


def test_unreachable_hub_exits_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refused_address: str
) -> None:
    files = write_federation(tmp_path, [], "127.0.0.1:1", "redis://127.0.0.1:1/0")
    code, out, err = run(
        capsys,
        "--config",
        str(files.hubctl_config),
        "--hub",
        refused_address,
        "--timeout",
        "2",
        "spokes",
    )
    assert code == 5
    assert out == ""
    assert err.startswith("Error: ")
    assert err.rstrip().endswith("[UNAVAILABLE]")
    assert "Traceback" not in err


def test_hub_from_env_and_debug_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    refused_address: str,
) -> None:
    files = write_federation(tmp_path, [], "127.0.0.1:1", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("HUBCTL_HUB", refused_address)
    code, _, err = run(capsys, "--config", str(files.hubctl_config), "--debug", "kill", "a1")
    assert code == 5
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("Error: ")


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        ("NOT_FOUND", 3),
        ("UNAUTHENTICATED", 4),
        ("PERMISSION_DENIED", 4),
        ("UNAVAILABLE", 5),
        ("DEADLINE_EXCEEDED", 5),
        ("FAILED_PRECONDITION", 1),
        ("INVALID_ARGUMENT", 1),
        ("INTERNAL", 1),
    ],
)
def test_exit_code_table(code: str, exit_code: int) -> None:
    import grpc

    assert cli.EXIT_CODES.get(grpc.StatusCode[code], 1) == exit_code


# -- JSON shape -----------------------------------------------------------------------------


def test_agent_json_always_has_the_key_fields() -> None:
    a = agent_pb2.Agent(agent_id="a1", spoke="s1", state=agent_pb2.Agent.STATE_QUEUED)
    doc = cli.agent_json(hc.Agent.from_proto(a))
    assert doc["agent_id"] == "a1"
    assert doc["spoke"] == "s1"
    assert doc["state"] == "QUEUED"
    assert doc["exit_code"] is None
    assert doc["stdout_tail"] == doc["stderr_tail"] == ""
    done = agent_pb2.Agent(agent_id="a2", state=agent_pb2.Agent.STATE_SUCCEEDED, exit_code=0)
    done.create_time.FromSeconds(1_800_000_000)
    doc = cli.agent_json(hc.Agent.from_proto(done))
    assert (doc["state"], doc["exit_code"], doc["spoke"]) == ("SUCCEEDED", 0, "")
    assert doc["create_time"] == "2027-01-15T08:00:00Z"
    json.dumps(doc)


def test_spoke_json() -> None:
    s = command_pb2.Spoke(name="s1", address="h:1", health=command_pb2.Spoke.HEALTH_UNREACHABLE)
    doc = cli.spoke_json(hc.Spoke.from_proto(s))
    want = {
        "name": "s1",
        "address": "h:1",
        "health": "UNREACHABLE",
        "labels": {},
        "draining": False,
    }
    assert {k: doc.get(k) for k in want} == want


def test_state_names_round_trip() -> None:
    for value in agent_pb2.Agent.State.values()[1:]:
        assert hc.AgentState.parse(hc.AgentState(value).name) == value
    with pytest.raises(ValueError, match="unspecified"):
        hc.AgentState.parse("unspecified")


def test_module_entry_point_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hubspoke.hub.cli",
            "keygen",
            "--out",
            str(tmp_path),
            "--name",
            "dave",
            "-q",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ed25519:")
