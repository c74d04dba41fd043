"""What the federation bench reads about sockets: the TCP connections between the hubd and
the simulated spokes, from ``/proc`` (no ``ss`` needed)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ESTABLISHED = "01"


def socket_inodes(pid: int) -> set[str]:
    """Inodes of every socket ``pid`` holds open."""
    found: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _port(hex_addr: str) -> int:
    return int(hex_addr.rsplit(":", 1)[1], 16)


def established(pid: int) -> list[tuple[int, int]]:
    """``(local port, remote port)`` of every ESTABLISHED TCP socket ``pid`` holds."""
    mine = socket_inodes(pid)
    out: list[tuple[int, int]] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == ESTABLISHED and cols[9] in mine:
                out.append((_port(cols[1]), _port(cols[2])))
    return out


def hub_links(hub_pid: int, hub_port: int, sim_pids: Iterable[int]) -> int:
    """Distinct TCP connections at the hub's listening port whose other end a simulator
    process holds (each is one connection: the client's ephemeral port is unique)."""
    at_hub = {remote for local, remote in established(hub_pid) if local == hub_port}
    at_sims: set[int] = set()
    for pid in sim_pids:
        at_sims |= {local for local, remote in established(pid) if remote == hub_port}
    return len(at_hub & at_sims)
