"""``hubctl dev up``: a real federation of subprocesses, driven through the hubctl CLI."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hubspoke import keys
from hubspoke.hub.federation_files import write_federation
from hubspoke.trust import TrustStore

BIN = Path(sys.executable).parent
HUBCTL = str(BIN / "hubctl")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int, cmdline: str) -> bool:
    """Running (not a zombie) and still the same program, so a reused pid does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z" and _cmdline(pid) == cmdline


@dataclass
class DevUp:
    root: Path
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def stderr_path(self) -> Path:
        return self.root.parent / "dev-up.stderr"

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no 'ready' within {timeout_s} s:\n{self.stderr_path.read_text()}")
            if line is None:
                pytest.fail(f"dev up exited {self.process.wait()}:\n{self.stderr_path.read_text()}")
            if line.strip() == "ready":
                return

    def hubctl(self, *args: str) -> Any:
        env = {**os.environ, "HUBCTL_CONFIG": str(self.root / "hubctl.toml")}
        done = subprocess.run(
            [HUBCTL, "--json", *args], capture_output=True, text=True, env=env, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def dev_up(tmp_path: Path) -> Iterator[DevUp]:
    root = tmp_path / "dev"
    with (tmp_path / "dev-up.stderr").open("w") as stderr:
        process = subprocess.Popen(
            [HUBCTL, "dev", "up", "--dir", str(root), "--spokes", "2"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    up = DevUp(root, process)
    reader = threading.Thread(target=up.read, daemon=True)
    reader.start()
    children: list[int] = []
    try:
        yield up
    finally:
        if process.poll() is None:
            children = _children(process.pid)
            process.send_signal(signal.SIGKILL)
            process.wait()
            for pid in children:  # each child leads its own process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        reader.join(5)
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_dev_up_serves_spawns_and_stops_cleanly(dev_up: DevUp) -> None:
    dev_up.wait_ready(30)
    children = {pid: _cmdline(pid) for pid in _children(dev_up.process.pid)}
    programs = sorted(
        name
        for cmd in children.values()
        for name in ("hubd", "spoked", "redis-server")
        if f"/{name} " in cmd
    )
    assert programs == ["hubd", *["redis-server"] * 3, *["spoked"] * 2], children

    agent = dev_up.hubctl("spawn", "--spoke", "spoke-2", "--", "duration=0.2")
    assert agent["spoke"] == "spoke-2"
    deadline = time.monotonic() + 20
    while (state := dev_up.hubctl("status", agent["agent_id"])["state"]) != "SUCCEEDED":
        assert state in {"QUEUED", "STARTING", "RUNNING"}, state
        assert time.monotonic() < deadline, f"still {state}"
        time.sleep(0.2)
    spokes = dev_up.hubctl("spokes")["spokes"]
    assert sorted((s["name"], s["health"]) for s in spokes) == [
        ("spoke-1", "READY"),
        ("spoke-2", "READY"),
    ]

    dev_up.process.send_signal(signal.SIGTERM)
    assert dev_up.process.wait(15) == 0
    left = [cmd for pid, cmd in children.items() if _alive(pid, cmd)]
    assert left == []
    assert "SIGTERM: stopping" in dev_up.stderr_path.read_text()


def _listening_after_a_free_port() -> tuple[socket.socket, int]:
    """A socket listening on port P + 1, where P was free a moment ago; and P."""
    for _ in range(100):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port - 1))
            except OSError:
                taken.close()
                continue
        taken.listen()
        return taken, port - 1
    pytest.fail("no free port next to a free port")


@pytest.mark.slow
def test_dev_up_reports_a_server_that_cannot_start(tmp_path: Path) -> None:
    """A taken port makes a spoke fail at start: exit 1, the log named, nothing left running."""
    taken, base = _listening_after_a_free_port()  # the hub gets base, spoke-1 base + 1
    with taken:
        argv = ["dev", "up", "--dir", str(tmp_path), "--spokes", "1", "--base-port", str(base)]
        done = subprocess.run([HUBCTL, *argv], capture_output=True, text=True, timeout=40)
    assert done.returncode == 1, done.stderr
    assert f"spoke-1 exited with status 1 at start; see {tmp_path}/logs/spoke-1.log" in done.stderr
    assert "ready" not in done.stdout
    assert [
        pid for pid in os.listdir("/proc") if pid.isdigit() and str(tmp_path) in _cmdline(int(pid))
    ] == []


def test_keys_from_an_earlier_run_are_kept(tmp_path: Path) -> None:
    redis = "redis://127.0.0.1:1/0"
    first = write_federation(
        tmp_path, [("spoke-1", "127.0.0.1:7101", redis)], "127.0.0.1:7100", redis, keep_keys=True
    )
    before = {p.name: p.read_bytes() for p in first.keys_dir.glob("*.key")}
    second = write_federation(
        tmp_path,
        [("spoke-1", "127.0.0.1:8101", redis), ("spoke-2", "127.0.0.1:8102", redis)],
        "127.0.0.1:8100",
        redis,
        keep_keys=True,
    )
    after = {p.name: p.read_bytes() for p in second.keys_dir.glob("*.key")}
    assert {k: after[k] for k in before} == before
    assert set(after) == {*before, "spoke-2.key"}
    assert "127.0.0.1:8100" in second.hubctl_config.read_text()
    assert "127.0.0.1:8102" in second.hub_config.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []
    fresh = tmp_path / "fresh"
    write_federation(
        fresh, [("spoke-1", "127.0.0.1:1", redis)], "127.0.0.1:2", redis, keep_keys=True
    )
    assert {p.name for p in fresh.iterdir()} <= {p.name for p in tmp_path.iterdir()}
    trust = TrustStore.from_file(second.trust_file)
    for name in ("hub", "operator", "spoke-1", "spoke-2"):
        key = keys.load_private(second.keys_dir / f"{name}.key", name)
        assert [k.fingerprint for k in trust.keys_of(name)] == [keys.fingerprint(key.public)]


def test_dev_up_imports_no_server_module() -> None:
    code = (
        "import sys, hubspoke.hub.cli, hubspoke.hub.dev; "
        "print([m for m in sys.modules "
        "if m == 'hubspoke.hub.app' or m.startswith('hubspoke.spoke')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_dev_env_prints_the_export_line(tmp_path: Path) -> None:
    (tmp_path / "hubctl.toml").write_text("")
    done = subprocess.run(
        [HUBCTL, "dev", "env", "--dir", str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout == f"export HUBCTL_CONFIG={tmp_path / 'hubctl.toml'}\n"
