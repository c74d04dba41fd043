"""``spoked --workers 2`` (spoke/workers.py): two processes serve one port with SO_REUSEPORT,
connections land on both, each answers spawns and statuses of agents the primary runs; the
helper stops with its primary (SIGTERM) or by itself when the primary is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from .conftest import Peers, SpokeClient, spoke_mapping
from .test_recovery import write_spoke_toml

pytestmark = pytest.mark.timeout(90)


def _rows(port: int, state: str) -> set[int]:
    """Inodes of the TCP sockets on local ``port`` in ``state`` (0A listen, 01 established);
    gRPC binds IPv4-mapped IPv6 sockets, so both tables are read."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            f = row.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == state:
                out.add(int(f[9]))
    return out


def _listeners(port: int) -> set[int]:
    return _rows(port, "0A")


def _established(port: int) -> set[int]:
    return _rows(port, "01")


def _sockets(pid: int) -> set[int]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


async def _until(check, within: float = 20) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def primary(
    peers: Peers, redis_url: str, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    path = write_spoke_toml(tmp_path / "s.toml", spoke_mapping(peers, redis_url))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hubspoke.spoke",
        "--config",
        str(path),
        "--workers",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"serving "), line
    port = int(line.split()[1])
    await _until(lambda: len(_listeners(port)) == 2)  # the helper is serving too
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_two_processes_share_the_port_and_both_answer(
    primary: tuple[asyncio.subprocess.Process, int], peers: Peers
) -> None:
    proc, port = primary
    (helper,) = _children(proc.pid) or [0]
    # A channel of its own per client (gRPC shares one connection per target otherwise).
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", [("grpc.use_local_subchannel_pool", 1)])
        for _ in range(16)
    ]
    try:
        clients = [SpokeClient(ch, peers) for ch in channels]
        spawned = [await c.spawn("duration=0.05") for c in clients]
        answers = [await c.get(r.agent.agent_id) for c, r in zip(clients, spawned, strict=True)]
        assert [a.agent.agent_id for a in answers] == [r.agent.agent_id for r in spawned]
        # Connections landed on both processes (16 of them: all on one is 2 in 65,536).
        conns = _established(port)
        assert conns & _sockets(proc.pid)
        assert conns & _sockets(helper)
        for c, r in zip(clients, spawned, strict=True):  # the primary runs every agent
            await c.wait_state(r.agent.agent_id, "SUCCEEDED")
    finally:
        for ch in channels:
            await ch.close()
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 30)
    await _until(lambda: not _alive(helper))


async def test_a_helper_stops_when_its_primary_is_killed(
    primary: tuple[asyncio.subprocess.Process, int],
) -> None:
    proc, _ = primary
    (helper,) = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await _until(lambda: not _alive(helper))
