"""The CPU time and memory any process has used, from /proc.

The processes themselves (spoked, hubd, redis-server, the echo servers) are the harness's
(:mod:`hubspoke.testing`), started by :mod:`benchlib.cluster`.
"""

from __future__ import annotations

import os

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of ``pid`` (all its threads) from /proc, or NaN if it is gone; with
    ``children``, plus the CPU of its children it has reaped (cutime + cstime)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return float("nan")
    fields = data[data.rfind(b")") + 2 :].split()
    # fields[0] is stat field 3; utime, stime, cutime, cstime are fields 14 to 17.
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
