"""Connect link mode (issue 10): the spoke dials the hub, keeps a control stream open and
serves each call on a stream of its own; it opens no listening socket.

On loopback (one federation for the module, real hubd, spoked, Redis and hubctl): spawn,
status, watch and kill work through hubctl; ``hubctl spokes`` shows the spoke READY with its
last heartbeat; spoked listens on no TCP port; a hello signed by the wrong key, for another
hub, or of a spoke the hub does not link in connect mode is refused; a stopped spoke is
DISCONNECTED and calls to it fail at once with SPOKE_DISCONNECTED, and it comes back by
itself. Across two network namespaces (as root): the same verbs work, and a watched agent
writing 10 MB of output does not delay the spoke's heartbeats at the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from hubspoke import keys, testing, version
from hubspoke.gen.federation.v1 import link_service_pb2, link_service_pb2_grpc
from hubspoke.link_protocol import CONTROL, SERVE, SERVICE, sign_hello
from hubspoke.redis_access import RedisAccess
from hubspoke.testing import until

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

SPOKE = "spoke-1"
HEARTBEAT_S = 0.5


async def spoke_row(fed: testing.Federation, name: str = SPOKE) -> dict[str, Any]:
    run = await fed.hubctl("--json", "spokes")
    assert run.code == 0, run.stderr
    rows: dict[str, dict[str, Any]] = {s["name"]: s for s in run.doc()["spokes"]}
    return rows[name]


async def health_is(fed: testing.Federation, state: str) -> bool:
    return (await spoke_row(fed)).get("health") == state


def listening_pids() -> set[int]:
    """Pids of every process with a listening TCP socket in this network namespace."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening_inodes() -> set[str]:
    """Inodes of listening TCP sockets (state 0A) in this network namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":
                found.add(cols[9])
    return found


def assert_no_listening_socket(pid: int) -> None:
    assert not socket_inodes(pid) & listening_inodes(), "spoked holds a listening socket"
    with contextlib.suppress(FileNotFoundError):  # no ss: /proc said it already
        assert pid not in listening_pids(), "ss -ltnp shows spoked listening"


def max_gap(metrics_text: str, spoke: str = SPOKE) -> float:
    pattern = rf'hubspoke_link_heartbeat_gap_max_seconds{{spoke="{re.escape(spoke)}"}} (\S+)'
    found = re.search(pattern, metrics_text)
    assert found, "no heartbeat gap metric"
    return float(found.group(1))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[testing.Federation]:
    federation = testing.Federation(tmp_path_factory.mktemp("connect"), [SPOKE])
    hub_env, spoke_env = testing.connect_env(federation, heartbeat_interval_s=HEARTBEAT_S)
    federation.hub_env.update(hub_env)
    federation.spoke_env.update(spoke_env)
    try:
        await federation.start()
        await until(lambda: health_is(federation, "READY"), 20, "the spoke READY")
        yield federation
    finally:
        await federation.stop()


async def test_spawn_status_watch_kill_through_a_connect_mode_spoke(
    fed: testing.Federation,
) -> None:
    assert_no_listening_socket(fed.spoked().pid)
    row = await spoke_row(fed)
    assert row["health"] == "READY", row
    assert row["last_seen_time"]
    assert not row.get("address")
    assert row["link_mode"] == "connect"
    assert row["status"]["redis_ok"] is True

    run = await fed.hubctl("--json", "spawn", "--spoke", SPOKE, "--wait", "--", "duration=0.2")
    assert run.code == 0, run.stderr
    done = run.doc()
    assert done["state"] == "SUCCEEDED", done

    status = await fed.hubctl("--json", "status", done["agent_id"])
    assert status.code == 0, status.stderr
    assert status.doc()["state"] == "SUCCEEDED"

    run = await fed.hubctl("spawn", "-q", "--spoke", SPOKE, "--", "duration=30", "steps=30")
    assert run.code == 0, run.stderr
    agent = run.stdout.strip()
    watch = asyncio.create_task(fed.hubctl("watch", agent, timeout_s=60))
    await until(lambda: _state_is(fed, agent, "RUNNING"), 20, "the long agent RUNNING")
    kill = await fed.hubctl("--json", "kill", agent)
    assert kill.code == 0, kill.stderr
    assert kill.doc()["state"] == "KILLED"
    watched = await watch
    shown = watched.stdout + watched.stderr  # the state lines go to stderr, output to stdout
    assert "state RUNNING" in shown, shown
    assert "state KILLED" in shown, shown


async def _state_is(fed: testing.Federation, agent: str, state: str) -> bool:
    run = await fed.hubctl("--json", "status", agent)
    return run.code == 0 and run.doc()["state"] == state


async def _control(hub: str, hello: Any) -> grpc.aio.AioRpcError:
    """Open a Control stream with ``hello``; the error it ends with."""
    async with grpc.aio.insecure_channel(hub) as channel:
        stub = link_service_pb2_grpc.SpokeLinkServiceStub(channel)
        opener: Any = stub.Control
        call = opener(metadata=version.CALL_METADATA)
        await call.write(link_service_pb2.SpokeLinkServiceControlRequest(hello=hello))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async with asyncio.timeout(10):
                await call.read()
        return caught.value


async def test_a_forged_hello_is_refused(fed: testing.Federation) -> None:
    forger = keys.generate(SPOKE)  # a key with the spoke's name that no trust store holds
    refused = await _control(fed.hub_address, sign_hello(SPOKE, fed.hub_name, forger, 1.0))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()

    genuine = fed.key(SPOKE)
    other_hub = await _control(fed.hub_address, sign_hello(SPOKE, "another-hub", genuine, 1.0))
    assert other_hub.code() == grpc.StatusCode.PERMISSION_DENIED, other_hub.details()

    hub_key = fed.key(fed.hub_name)  # trusted, but as a hub: not a spoke's hello
    as_hub = await _control(fed.hub_address, sign_hello(fed.hub_name, fed.hub_name, hub_key, 1.0))
    assert as_hub.code() == grpc.StatusCode.UNAUTHENTICATED, as_hub.details()

    # The real spoke's session was never disturbed.
    assert await health_is(fed, "READY")


async def test_every_link_method_has_its_refusals_in_this_module() -> None:
    assert [m.name for m in SERVICE.methods] == ["Control", "Serve"], (
        "a new SpokeLinkService method needs its refusal cases below"
    )


async def test_the_link_service_refuses_unsigned_replayed_and_out_of_order_input(
    fed: testing.Federation,
) -> None:
    genuine = sign_hello(SPOKE, fed.hub_name, fed.key(SPOKE), HEARTBEAT_S)
    unsigned = type(genuine)(payload=genuine.payload, payload_type=genuine.payload_type)
    refused = await _control(fed.hub_address, unsigned)
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()

    # Bytes that are no protobuf message, on either stream.
    for path in (CONTROL, SERVE):
        async with grpc.aio.insecure_channel(fed.hub_address) as channel:
            raw = channel.stream_stream(path)(metadata=version.CALL_METADATA)
            await raw.write(b"\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw.read()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path

    # A heartbeat before any hello.
    async with grpc.aio.insecure_channel(fed.hub_address) as channel:
        opener: Any = link_service_pb2_grpc.SpokeLinkServiceStub(channel).Control
        call = opener(metadata=version.CALL_METADATA)
        await call.write(
            link_service_pb2.SpokeLinkServiceControlRequest(
                heartbeat=link_service_pb2.LinkHeartbeat()
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A Serve stream naming no announced call.
    async with grpc.aio.insecure_channel(fed.hub_address) as channel:
        opener = link_service_pb2_grpc.SpokeLinkServiceStub(channel).Serve
        call = opener(metadata=version.CALL_METADATA)
        await call.write(
            link_service_pb2.SpokeLinkServiceServeRequest(
                open=link_service_pb2.LinkServeOpen(call_id="0" * 32, spoke=SPOKE)
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The genuine spoke's hello, replayed: the first use opens a session (the spoke's own is
    # replaced, and it dials again), the second is refused.
    async with grpc.aio.insecure_channel(fed.hub_address) as channel:
        opener = link_service_pb2_grpc.SpokeLinkServiceStub(channel).Control
        first = opener(metadata=version.CALL_METADATA)
        await first.write(link_service_pb2.SpokeLinkServiceControlRequest(hello=genuine))
        welcome = await first.read()
        assert welcome.WhichOneof("kind") == "welcome"
        first.cancel()
    replayed = await _control(fed.hub_address, genuine)
    assert replayed.code() == grpc.StatusCode.UNAUTHENTICATED, replayed.details()
    assert "already used" in (replayed.details() or "")
    await until(lambda: health_is(fed, "READY"), 20, "the spoke READY again")


async def test_a_silent_spoke_is_disconnected_after_missed_heartbeats_then_returns(
    fed: testing.Federation,
) -> None:
    spoked = fed.spoked()
    spoked.signal(signal.SIGSTOP)
    try:
        await until(lambda: health_is(fed, "DISCONNECTED"), 15, "the silent spoke DISCONNECTED")
        assert (await spoke_row(fed))["health_detail"] == "missed 3 heartbeats"
    finally:
        spoked.signal(signal.SIGCONT)
    await until(lambda: health_is(fed, "READY"), 20, "the spoke READY after SIGCONT")


async def test_a_stopped_spoke_is_disconnected_and_fails_at_once_then_returns(
    fed: testing.Federation,
) -> None:
    spoked = fed.spoked()
    await spoked.stop()
    await until(lambda: health_is(fed, "DISCONNECTED"), 10, "the spoke DISCONNECTED")
    started = time.monotonic()
    run = await fed.hubctl("--json", "status", f"spokes/{SPOKE}/agents/any-agent")
    took = time.monotonic() - started
    assert run.code != 0
    assert "SPOKE_DISCONNECTED" in run.stderr, run.stderr
    assert took < 5, took  # hubctl's own start-up; never a call timeout (10 s) per retry
    await spoked.start()
    await until(lambda: health_is(fed, "READY"), 20, "the spoke READY again")
    run = await fed.hubctl("--json", "spawn", "--spoke", SPOKE, "--wait", "--", "duration=0.1")
    assert run.code == 0, run.stderr
    assert run.doc()["state"] == "SUCCEEDED", run.stderr


# -- across two network namespaces -------------------------------------------------------

NETNS_HUB_IP = "10.232.0.1"
NETNS_SPOKE_IP = "10.232.0.2"
NETNS_HUB_PORT = 7100
NETNS_METRICS_PORT = 9100
OUTPUT_BYTES = 10_000_000
NETNS_HEARTBEAT_S = 1.0
GAP_SLACK_S = 1.0
"""What a loaded 2-core test box may add to a heartbeat's gap beyond twice the interval."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _make_namespaces(names: dict[str, str], veth: dict[str, str], created: list[str]) -> None:
    """Two namespaces joined by a veth pair, each end with its address; ``created`` lists
    the namespaces made so far (for teardown). Skips the test if ``ip netns add`` fails."""
    ips = {"hub": NETNS_HUB_IP, SPOKE: NETNS_SPOKE_IP}
    for netns in names.values():
        try:
            _ip("netns", "add", netns)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"`ip netns add` failed: {exc.stderr.decode(errors='replace')}")
        created.append(netns)
    # Both ends are created inside the namespaces: the pair never exists on this host.
    _ip(
        "link", "add", veth["hub"], "netns", names["hub"], "type", "veth",
        "peer", "name", veth[SPOKE], "netns", names[SPOKE],
    )  # fmt: skip
    for peer, netns in names.items():
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{ips[peer]}/30", "dev", veth[peer])
        _ip("-n", netns, "link", "set", veth[peer], "up")


def _remove_namespaces(created: list[str]) -> None:
    for netns in created:
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


class NetnsFederation(testing.Federation):
    """A federation whose hubd and spokeds run in network namespaces of their own."""

    netns: dict[str, str]

    def _daemon(self, name: str, argv: list[str], listen: str, env: Any) -> testing.Daemon:
        netns = self.netns[name.split(".")[0]]
        return super()._daemon(name, ["ip", "netns", "exec", netns, *argv], listen, env)

    async def run_in(self, peer: str, *argv: str, timeout_s: float = 120) -> testing.HubctlRun:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.netns[peer], *argv,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        return testing.HubctlRun(await proc.wait(), out.decode(), err.decode())

    async def hubctl(self, *argv: str, timeout_s: float = 60.0) -> testing.HubctlRun:
        """hubctl as the operator, in the hub's namespace."""
        return await self.run_in(
            self.hub_name, *testing.server_argv("hubctl", "hubspoke.hub.cli"),
            "--config", str(self.files.hubctl_config), "--hub", self.hub_address, *argv,
            timeout_s=timeout_s,
        )  # fmt: skip


@pytest_asyncio.fixture(loop_scope="module")
async def netns_fed(tmp_path: Path) -> AsyncIterator[NetnsFederation]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` for network namespaces")
    tag = f"{os.getpid()}{os.urandom(2).hex()}"[-10:]
    names = {"hub": f"hc-{tag}-hub", SPOKE: f"hc-{tag}-spk"}
    veth = {"hub": f"hc{tag}h"[:15], SPOKE: f"hc{tag}s"[:15]}
    created: list[str] = []
    # One Redis for both, on a unix socket: a file, reachable from every namespace.
    redis = testing.EmbeddedRedis(tmp_path / "redis", unix_socket=True)
    fed: NetnsFederation | None = None
    try:
        _make_namespaces(names, veth, created)
        await redis.start()
        assert redis.unix_socket is not None
        fed = NetnsFederation(
            tmp_path / "fed",
            [SPOKE],
            tls=True,  # not loopback: mutual TLS, as in production
            redis_url=access_of(redis),
            addresses={"hub": f"{NETNS_HUB_IP}:{NETNS_HUB_PORT}"},
            hub_env={"HUB_METRICS_LISTEN": f"127.0.0.1:{NETNS_METRICS_PORT}"},
        )
        fed.netns = names
        hub_env, spoke_env = testing.connect_env(fed, heartbeat_interval_s=NETNS_HEARTBEAT_S)
        fed.hub_env.update(hub_env)
        fed.spoke_env.update(spoke_env)
        await fed.start()
        await until(lambda: health_is(fed, "READY"), 30, "the spoke READY across namespaces")
        yield fed
    finally:
        if fed is not None:
            await fed.stop()
        await redis.stop()
        _remove_namespaces(created)


def access_of(redis: testing.EmbeddedRedis) -> RedisAccess:
    """The Redis's unix socket, with its password."""
    return RedisAccess(f"unix://{redis.unix_socket}", password_file=redis.access.password_file)


@pytest.mark.slow
async def test_across_namespaces_verbs_work_and_10mb_of_output_does_not_delay_heartbeats(
    netns_fed: NetnsFederation,
) -> None:
    fed = netns_fed
    listening = await fed.run_in(SPOKE, "ss", "-ltnpH")
    assert listening.code == 0, listening.stderr
    assert listening.stdout.strip() == "", (
        f"something listens in the spoke's namespace: {listening.stdout}"
    )
    assert_no_listening_socket(fed.spoked().pid)

    run = await fed.hubctl("--json", "spawn", "--spoke", SPOKE, "--wait", "--", "duration=0.2")
    assert run.code == 0, run.stderr
    assert run.doc()["state"] == "SUCCEEDED", run.stderr
    status = await fed.hubctl("--json", "status", run.doc()["agent_id"])
    assert status.code == 0, status.stderr
    assert status.doc()["state"] == "SUCCEEDED", status.stderr

    # 10 MB of output, watched from the hub's side while the spoke heartbeats.
    # Ten bursts of 1 MB over about 3 s: the spoke records what its output cap lets through
    # (about 64 KB/s per stream) and streams it to the watcher while the rest is counted.
    burst = f"head -c {OUTPUT_BYTES // 10} /dev/zero | tr '\\0' x | fold -w 999"
    script = f"for i in 1 2 3 4 5 6 7 8 9 10; do {burst}; sleep 0.3; done"
    run = await fed.hubctl("spawn", "-q", "--spoke", SPOKE, "--profile", "shell", "--", script)
    assert run.code == 0, run.stderr
    agent = run.stdout.strip()
    before = max_gap(await _scrape_in(fed))
    watched = await fed.hubctl("watch", agent, timeout_s=120)
    assert watched.code == 0, watched.stderr
    assert "state SUCCEEDED" in watched.stderr, watched.stderr
    assert watched.stdout.count("x" * 999) > 50, "the watch carried little of the output"
    gap = max_gap(await _scrape_in(fed))
    assert gap <= 2 * NETNS_HEARTBEAT_S + GAP_SLACK_S, f"a heartbeat gap of {gap:.2f} s"
    assert before <= gap
    assert (await spoke_row(fed))["health"] == "READY"

    run = await fed.hubctl("spawn", "-q", "--spoke", SPOKE, "--", "duration=30", "steps=30")
    assert run.code == 0, run.stderr
    long_agent = run.stdout.strip()
    await until(lambda: _state_is(fed, long_agent, "RUNNING"), 20, "the long agent RUNNING")
    kill = await fed.hubctl("--json", "kill", long_agent)
    assert kill.code == 0, kill.stderr
    assert kill.doc()["state"] == "KILLED", kill.stderr


async def _scrape_in(fed: NetnsFederation) -> str:
    url = f"http://127.0.0.1:{NETNS_METRICS_PORT}/metrics"
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    run = await fed.run_in(fed.hub_name, sys.executable, "-c", code)
    assert run.code == 0, run.stderr
    return run.stdout
