"""The faults, each recorded on a timeline, and a probe for what this machine can inject.

Every fault appends a :class:`FaultEvent` (wall-clock start and end, what was done) to the
:class:`Timeline`; spans during which no spawn may be answered OK become outage
:class:`~chaoslib.ledger.Window` s for the checker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from .cluster import Cluster, Daemon
from .ledger import Window

__all__ = ["FaultEvent", "Timeline", "netem_support"]


@dataclass(frozen=True, slots=True)
class FaultEvent:
    name: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Timeline:
    """Faults as they happened, and the outage windows they imply."""

    events: list[FaultEvent] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)

    def add(
        self,
        name: str,
        start: float,
        end: float,
        detail: str = "",
        outage_end: float | None = None,
    ) -> None:
        """Record a fault; ``outage_end`` (if given) closes an outage window begun at ``start``.

        An outage window ends when the repair *begins* (the replacement process is launched,
        the proxy heals), not when the repair is seen to be complete: a spawn held in a
        retry across the repair may rightly be answered OK once the server is back, a few
        milliseconds before our own readiness poll notices. Inside the window no server
        exists, so an OK there would be an acknowledgement without a durable write.
        """
        self.events.append(FaultEvent(name, start, end, detail))
        if outage_end is not None:
            self.windows.append(Window(name, start, outage_end))

    async def sigkill_spoked(self, cluster: Cluster, daemon: Daemon, down_s: float) -> float:
        """SIGKILL a spoked, keep it down ``down_s``, start it again; return the downtime."""
        t0 = time.time()
        pid = daemon.pid
        await daemon.kill()
        await asyncio.sleep(down_s)
        launched = time.time()
        await daemon.start()
        t1 = time.time()
        outage_end = launched if daemon is cluster.spoked else None
        self.add("sigkill-spoked", t0, t1, f"pid {pid} -> {daemon.pid}", outage_end)
        return t1 - t0

    async def sigstop(self, daemon: Daemon, stopped_s: float) -> None:
        """SIGSTOP a process for ``stopped_s`` seconds, then SIGCONT."""
        t0 = time.time()
        daemon.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(stopped_s)
        finally:
            daemon.signal(signal.SIGCONT)
        self.add("sigstop-spoked", t0, time.time(), f"pid {daemon.pid} for {stopped_s:g} s")

    async def sigkill_redis(self, cluster: Cluster, down_s: float) -> None:
        """SIGKILL the spoke site's redis-server, restart it on its AOF after ``down_s``."""
        t0 = time.time()
        pid = cluster.spoke_redis.pid
        await cluster.spoke_redis.kill()
        await asyncio.sleep(down_s)
        launched = time.time()
        await cluster.spoke_redis.start()  # returns once it answers PING, AOF loaded
        self.add("sigkill-redis", t0, time.time(), f"pid {pid}", launched)

    async def sigkill_hubd(self, cluster: Cluster, down_s: float) -> None:
        """SIGKILL hubd, start it again on the same address after ``down_s``."""
        t0 = time.time()
        pid = cluster.hubd.pid
        await cluster.hubd.kill()
        await asyncio.sleep(down_s)
        launched = time.time()
        await cluster.hubd.start()
        self.add("sigkill-hubd", t0, time.time(), f"pid {pid} -> {cluster.hubd.pid}", launched)

    async def partition(self, cluster: Cluster, cut_s: float) -> None:
        """Cut hub <-> spoke at the proxy for ``cut_s`` seconds."""
        proxy = cluster.proxy
        if proxy is None:
            raise RuntimeError("the partition needs a cluster started with via_proxy=True")
        t0 = time.time()
        await proxy.cut()
        try:
            await asyncio.sleep(cut_s)
        finally:
            healing = time.time()
            await proxy.heal()
        self.add("partition", t0, time.time(), f"proxy cut {cut_s:g} s", healing)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)


def netem_support() -> tuple[bool, str]:
    """Can this machine run the delay/loss scenario (root, ``ip netns``, ``tc`` netem)?

    Tries it for real in a scratch namespace (removed again) and says why not if it fails.
    """
    if os.geteuid() != 0:
        return False, "not root: network namespaces and tc need CAP_NET_ADMIN"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed"
    ns = f"chaos-probe-{uuid.uuid4().hex[:6]}"
    made = _run("ip", "netns", "add", ns)
    if made.returncode != 0:
        return False, f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        qdisc = _run(
            "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
            "delay", "10ms",
        )  # fmt: skip
        if qdisc.returncode != 0:
            return False, f"`tc qdisc add ... netem` failed: {qdisc.stderr.strip()}"
        return True, "ok"
    finally:
        _run("ip", "netns", "del", ns)
