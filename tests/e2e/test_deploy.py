"""docs/deploy.md, executed: a hub and a spoke in two network namespaces, by the doc's commands.

The test reads the fenced ``sh`` blocks of docs/deploy.md and runs them in order (the rules
are in the doc's HTML comment):

- ``# host: NAME``: the block runs as one ``bash -euo pipefail`` script in NAME's namespace;
- ``# host: NAME (daemon)``: each line is started in the background in NAME's namespace, and
  the test waits for its readiness line (redis-server: ``Ready to accept connections``,
  hubd and spoked: ``serving``);
- ``# host: NAME (check)``: each line must exit 0; ``hubctl ... spokes`` is repeated until
  every spoke is READY (the hub probes spokes when asked, and a spoke may still be starting);
- other blocks (no ``# host:`` line, or ``(systemd)``) are not run.

Placeholders the test substitutes, so the doc's text stays the operator's:

============================  ==================================================
in the doc                    in the test
============================  ==================================================
``hub-host``, ``build-host``  10.231.0.1 and 10.231.0.2, on a veth pair between the
                              two namespaces (only there: no host route, no traffic
                              outside the namespaces or their loopbacks)
``/etc/hubspoke``,            ``TMP/<host>/etc-hubspoke``, ``TMP/<host>/var-lib-hubspoke``
``/var/lib/hubspoke``,        and ``TMP/<host>/tmp``, one set per host
``/tmp``
``scp A:path B``              ``cp`` between those directories
``hubctl``, ``hubd``,         this environment's (``.venv/bin``), and redis-server as
``spoked``, ``redis-server``  ``hubspoke.testing.find_redis_server`` finds it
============================  ==================================================

Then, beyond the doc: plaintext gRPC from the spoke's namespace to the hub (and from the
hub's to the spoke) is refused although TCP reaches the port.

Needs root and ``ip netns``; skipped with the reason otherwise. Namespaces and processes are
removed in teardown, also when the test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from hubspoke.testing import find_redis_server

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
HOSTS = {"hub-host": "10.231.0.1", "build-host": "10.231.0.2"}
PREFIX_LEN = 30
READY = {
    "redis-server": "Ready to accept connections",
    "hubd": "serving",
    "spoked": "serving",
}
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Block:
    host: str
    mode: str
    """"" (a script), "daemon" or "check"."""
    lines: tuple[str, ...]


def doc_blocks(text: str) -> list[Block]:
    """The doc's runnable blocks, in order."""
    blocks: list[Block] = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        raw = body.replace("\\\n", " ").splitlines()
        head = re.fullmatch(r"# host: (\S+)(?: \((\w+)\))?", raw[0].strip()) if raw else None
        if head is None or head.group(2) == "systemd":
            continue
        lines = tuple(ln.strip() for ln in raw[1:] if ln.strip() and not ln.startswith("#"))
        blocks.append(Block(head.group(1), head.group(2) or "", lines))
    return blocks


@dataclass
class Site:
    """One host: its namespace and its directories."""

    name: str
    netns: str
    root: Path

    def path(self, doc_path: str) -> str:
        for prefix, local in (
            ("/etc/hubspoke", "etc-hubspoke"),
            ("/var/lib/hubspoke", "var-lib-hubspoke"),
            ("/tmp", "tmp"),
        ):
            if doc_path == prefix or doc_path.startswith(prefix + "/"):
                return str(self.root / local) + doc_path[len(prefix) :]
        return doc_path


@dataclass
class Deployment:
    sites: dict[str, Site]
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    def localize(self, site: Site, line: str) -> str:
        """The doc's line with this test's paths and addresses."""
        words = line.split()
        if words and words[0] == "scp":
            src, dst = (self._remote(site, w) for w in words[-2:])
            return f"cp {src} {dst}"
        # Hosts first: the directories substituted next have host names in their paths.
        for host, address in HOSTS.items():
            line = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w.-])", address, line)
        return re.sub(
            r"(?<![\w.-])(/etc/hubspoke|/var/lib/hubspoke|/tmp)(?=[/\s]|$)\S*",
            lambda m: site.path(m.group(0)),
            line,
        )

    def _remote(self, site: Site, word: str) -> str:
        host, sep, path = word.partition(":")
        if sep and host in self.sites:
            return self.sites[host].path(path)
        return site.path(word)

    def run(self, site: Site, script: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", site.netns, "bash", "-euo", "pipefail", "-c", script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, (
            f"on {site.name}: {script!r} exited {done.returncode}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
        return done.stdout

    def start(self, site: Site, line: str) -> None:
        program = Path(line.split()[0]).name
        log = (site.root / f"{program}.log").open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", site.netns, "bash", "-c", f"exec {line}"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append(proc)
        ready = threading.Event()
        seen: list[bytes] = []

        def read() -> None:
            assert proc.stdout is not None
            for chunk in iter(proc.stdout.readline, b""):
                seen.append(chunk)
                if READY[program].encode() in chunk:
                    ready.set()
            ready.set()  # EOF: it died, or closed stdout

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.readers.append(reader)
        assert ready.wait(START_TIMEOUT_S), f"{line!r} on {site.name}: not ready in time"
        assert proc.poll() is None, (
            f"{line!r} on {site.name} exited {proc.returncode}: "
            f"{b''.join(seen).decode(errors='replace')[-2000:]}\n"
            f"{(site.root / f'{program}.log').read_text(errors='replace')[-2000:]}"
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for reader in self.readers:
            reader.join(5)
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()
        for fh in self.files:
            fh.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` for network namespaces")
    tag = f"{os.getpid()}{os.urandom(2).hex()}"[-10:]
    names = {"hub-host": f"hs-{tag}-hub", "build-host": f"hs-{tag}-spk"}
    veth = {"hub-host": f"hs{tag}h"[:15], "build-host": f"hs{tag}s"[:15]}
    created: list[str] = []
    procs_owner: Deployment | None = None
    try:
        for netns in names.values():
            try:
                _ip("netns", "add", netns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"`ip netns add` failed: {exc.stderr.decode(errors='replace')}")
            created.append(netns)
        hub_ns, spk_ns = names["hub-host"], names["build-host"]
        # Both ends are created inside the namespaces: the pair never exists on this host.
        _ip(
            "link", "add", veth["hub-host"], "netns", hub_ns, "type", "veth",
            "peer", "name", veth["build-host"], "netns", spk_ns,
        )  # fmt: skip
        for host, netns in names.items():
            _ip("-n", netns, "link", "set", "lo", "up")
            _ip("-n", netns, "addr", "add", f"{HOSTS[host]}/{PREFIX_LEN}", "dev", veth[host])
            _ip("-n", netns, "link", "set", veth[host], "up")

        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "redis-server").symlink_to(find_redis_server())
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}{os.pathsep}{env['PATH']}"
        env.pop("HUBCTL_CONFIG", None)
        sites = {}
        for host, netns in names.items():
            root = tmp_path / host
            for sub in ("etc-hubspoke", "var-lib-hubspoke", "tmp"):
                (root / sub).mkdir(parents=True)
            sites[host] = Site(host, netns, root)
        procs_owner = Deployment(sites, env)
        yield procs_owner
    finally:
        if procs_owner is not None:
            procs_owner.stop()
        for netns in created:
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


_PLAINTEXT_PROBE = """
import socket, sys, grpc
host, port = sys.argv[1], int(sys.argv[2])
socket.create_connection((host, port), timeout=5).close()   # the port is reachable
with grpc.insecure_channel(f"{host}:{port}") as channel:
    call = channel.unary_unary("/federation.v1.HubService/ListSpokes")
    try:
        call(b"", timeout=5)
    except grpc.RpcError as exc:
        print(exc.code().name)
        sys.exit(0 if exc.code() == grpc.StatusCode.UNAVAILABLE else 1)
print("answered in plaintext")
sys.exit(1)
"""


def _spokes_ready(out: str) -> bool:
    rows = [ln.split() for ln in out.splitlines()[1:] if ln.strip()]
    return bool(rows) and all("READY" in row for row in rows)


def test_the_deploy_doc_runs_on_two_hosts(deployment: Deployment) -> None:
    blocks = doc_blocks(DOC.read_text())
    assert {b.mode for b in blocks} == {"", "daemon", "check"}, blocks
    assert {b.host for b in blocks} == set(HOSTS)
    checked = []
    for block in blocks:
        site = deployment.sites[block.host]
        lines = [deployment.localize(site, ln) for ln in block.lines]
        if block.mode == "daemon":
            for line in lines:
                deployment.start(site, line)
        elif block.mode == "check":
            for line in lines:
                if line.split()[-1] == "spokes":
                    deadline = time.monotonic() + START_TIMEOUT_S
                    out = deployment.run(site, line)
                    while not _spokes_ready(out) and time.monotonic() < deadline:
                        time.sleep(0.5)  # polling a condition: the hub probes when asked
                        out = deployment.run(site, line)
                    assert _spokes_ready(out), out
                    assert "build-2" in out, out
                else:
                    out = deployment.run(site, line)
                checked.append((line, out))
        else:
            deployment.run(site, "\n".join(lines))
    assert any(" spawn " in line and "SUCCEEDED" in out for line, out in checked), checked

    python = sys.executable
    hub, spoke = deployment.sites["hub-host"], deployment.sites["build-host"]
    for client, server, port in ((spoke, "hub-host", 7100), (hub, "build-host", 7101)):
        probe = f"{python} -c '{_PLAINTEXT_PROBE}' {HOSTS[server]} {port}"
        out = deployment.run(client, probe)
        assert out.strip() == "UNAVAILABLE", out
