"""The built wheel: one top-level package, and a working hubctl from a fresh venv.

The wheel is built with ``python -m build`` from a copy of this checkout's tracked files and
installed with ``--no-deps`` into a new venv; the dependencies come from this venv through a
``.pth`` file that lists a directory of links to everything in its site-packages except our
own editable install, so the fresh venv can only import ``hubspoke`` from the wheel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class FreshVenv:
    wheel: Path
    bin: Path

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=_env(),
        )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HUBCTL_CONFIG"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _tracked_copy(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():  # a tracked file deleted in the work tree is not part of it
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(src.read_bytes())
            target.chmod(src.stat().st_mode)


def _dependencies_dir(dest: Path) -> Path:
    """Links to this venv's site-packages, less our editable install: the fresh venv's deps."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("hubspoke", "__editable__")) or name.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    _tracked_copy(src)
    dist = work / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("hubspoke-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bindir = venv / "bin"
    install = subprocess.run(
        [str(bindir / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=_env(),
    )
    assert install.returncode == 0, install.stderr
    fresh_site = subprocess.run(
        [str(bindir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = _dependencies_dir(work / "deps")
    (Path(fresh_site) / "zz_hubspoke_test_deps.pth").write_text(f"{deps}\n")
    return FreshVenv(wheel, bindir)


def test_the_wheel_installs_one_top_level_package(fresh: FreshVenv) -> None:
    with zipfile.ZipFile(fresh.wheel) as whl:
        tops = {name.split("/", 1)[0] for name in whl.namelist()}
        dist_info = next(t for t in tops if t.endswith(".dist-info"))
        assert tops - {dist_info} == {"hubspoke"}
        members = set(whl.namelist())
    assert "hubspoke/gen/federation/v1/agent_pb2.pyi" in members  # typed stubs ship
    assert "hubspoke/py.typed" in members
    assert {"hubspoke/hub/cli.py", "hubspoke/spoke/app.py"} <= members
    assert "hubspoke/hub/fixtures/synthetic.toml" in members  # synthetic-all's package data


def test_the_fresh_venv_imports_hubspoke_from_the_wheel(fresh: FreshVenv) -> None:
    done = fresh.run("python", "-c", "import hubspoke.hub.cli as m; print(m.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(fresh.bin.parent)


def test_hubctl_from_the_wheel_prints_its_version(fresh: FreshVenv) -> None:
    done = fresh.run("hubctl", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hubctl", "0.1.0"]


@dataclass(frozen=True)
class DevUp:
    root: Path
    pid: int


@pytest.fixture
def dev_federation(fresh: FreshVenv, tmp_path: Path) -> Iterator[DevUp]:
    root = tmp_path / "fed"
    log = (tmp_path / "dev-up.stderr").open("w")
    proc = subprocess.Popen(
        [str(fresh.bin / "hubctl"), "dev", "up", "--dir", str(root), "--spokes", "1"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # blocks on lines; dev up prints 'ready' or exits
            if line.strip() == "ready":
                break
            assert time.monotonic() < deadline, "no 'ready' from dev up"
        else:
            pytest.fail(f"dev up exited {proc.wait()}: {(tmp_path / 'dev-up.stderr').read_text()}")
        yield DevUp(root, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def test_a_spawn_through_the_wheels_hubctl_succeeds(
    fresh: FreshVenv, dev_federation: DevUp
) -> None:
    config = str(dev_federation.root / "hubctl.toml")
    done = fresh.run(
        "hubctl", "--config", config, "spawn", "--spoke", "spoke-1", "--wait", "--",
        "duration=0.2", timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # dev up ran hubd and spoked from the fresh venv too, not from the one running this test.
    pids = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(dev_federation.pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    children = [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in pids
    ]
    daemons = [c for c in children if "hubd" in c or "spoked" in c]
    assert len(daemons) == 2, children
    assert all(str(fresh.bin) in c for c in daemons), daemons


def test_synthetic_all_from_the_wheel_passes_on_hubctl_dev_up(
    fresh: FreshVenv, dev_federation: DevUp
) -> None:
    """The shipped fixtures (package data) run end to end on the dev federation (issue 12)."""
    config = str(dev_federation.root / "hubctl.toml")
    done = fresh.run("hubctl", "--config", config, "--json", "synthetic-all", timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"passed": true' in done.stdout
