"""A cgroup v2 per supervised agent, where the host lets spoked create one.

With cgroup v2 mounted at ``/sys/fs/cgroup`` and spoked's own cgroup writable by it (e.g. a
systemd unit with ``Delegate=yes``), each agent gets a child cgroup of spoked's own
(``hubspoke-<agent id>.<attempt>``) that the agent joins before it runs (spoke/supervisor.sh),
so a kill reaches descendants that left the agent's process group (``setsid``, double fork).
Elsewhere (cgroup v1, a read-only or absent hierarchy, a container without delegation) the
process group is all a kill reaches, as before: :func:`detect` says which, and why.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupSupport", "agent_cgroup", "detect", "kill_cgroup", "remove_cgroup"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class CgroupSupport:
    """Where agents' cgroups go (``base``), or None and the reason there are none."""

    base: Path | None
    reason: str = ""


def detect(root: Path = CGROUP_ROOT) -> CgroupSupport:
    """Whether this host lets spoked create cgroups for its agents (module docstring)."""
    if not (root / "cgroup.controllers").exists():
        return CgroupSupport(None, f"no cgroup v2 hierarchy at {root}")
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return CgroupSupport(None, f"cannot read /proc/self/cgroup: {exc.strerror}")
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        return CgroupSupport(None, "spoked is in no cgroup v2 group")
    base = root / own.lstrip("/")
    if not os.access(base, os.W_OK):
        return CgroupSupport(None, f"spoked's cgroup {base} is not writable (no delegation)")
    return CgroupSupport(base)


def agent_cgroup(support: CgroupSupport, agent_id: str, attempt: int) -> Path | None:
    """Create the agent's cgroup; None where there are none or it cannot be made."""
    if support.base is None:
        return None
    path = support.base / f"hubspoke-{agent_id}.{attempt}"
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return path


def kill_cgroup(path: Path) -> int:
    """SIGKILL every process in the cgroup; how many were signalled (``cgroup.kill``
    counts as one)."""
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
            return 1
    killed = 0
    with contextlib.suppress(OSError):
        for line in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.kill(int(line), signal.SIGKILL)
                killed += 1
    return killed


def remove_cgroup(path: Path) -> None:
    """Remove an agent's (empty) cgroup; a busy or vanished one is left alone."""
    with contextlib.suppress(OSError):
        path.rmdir()
