"""Our agents' processes as the operating system sees them: identities that survive a spoked
crash, and signals to whole process groups.

A process is identified by ``(pid, pgid, start_ticks)``: the start time from
``/proc/<pid>/stat`` guards against pid reuse, so crash recovery can persist the identity and
later kill the agent only if it is still the same process (:func:`kill_identity`), and only
on the host boot that recorded it (:func:`boot_id`). Remnants whose leader is gone are found by
their process group and the agent marker in their environment (:func:`group_remnants`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass

import structlog

__all__ = [
    "KILL_WAIT_S",
    "UNKNOWN_START_TICKS",
    "ProcessIdentity",
    "boot_id",
    "group_remnants",
    "identity_alive",
    "kill_identity",
    "kill_remnants",
    "process_alive",
    "read_start_ticks",
    "self_identity",
    "signal_group",
]

_log = structlog.get_logger(__name__)

UNKNOWN_START_TICKS = -1
"""start_ticks of an agent that exited before its start time could be read."""
KILL_WAIT_S = 2.0
"""How long a kill waits for the process to vanish after SIGKILL."""
# How often kill_identity() looks whether the process is gone.
_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """A process, robust against pid reuse. Persist it with the job."""

    pid: int
    pgid: int
    start_ticks: int
    """Field 22 of /proc/<pid>/stat: start time in clock ticks since boot."""


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, start_ticks) from /proc/<pid>/stat, or None if unreadable."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself contain spaces and ')'.
    close = data.rfind(b")")
    if close < 0:
        return None
    fields = data[close + 1 :].split()
    try:
        # fields[0] is field 3 (state), so field N is fields[N - 3].
        return fields[0].decode("ascii", "replace"), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def read_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (field 22 of /proc/<pid>/stat), or None if there is no such pid."""
    stat = _read_stat(pid)
    return None if stat is None else stat[2]


def identity_alive(ident: ProcessIdentity) -> bool:
    """True only if the pid exists, is not a zombie, is still in its process group,
    and started at the recorded time (so it is not a reused pid)."""
    stat = _read_stat(ident.pid)
    if stat is None:
        return False
    state, pgrp, start_ticks = stat
    return (
        ident.start_ticks != UNKNOWN_START_TICKS
        and start_ticks == ident.start_ticks
        and pgrp == ident.pgid
        and state not in ("Z", "X", "x")
    )


def _may_signal(pgid: int) -> bool:
    """Never signal init's group, "our own group" (0, negative) or the spoke's own group."""
    return pgid > 1 and pgid != os.getpgrp()


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to process group ``pgid``. False if the group no longer exists."""
    if not _may_signal(pgid):
        _log.error("refusing_to_signal_group", pgid=pgid, signal=sig.name)
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        _log.warning("signal_group_denied", pgid=pgid, signal=sig.name)
        return False
    return True


async def _wait_gone(ident: ProcessIdentity, timeout_s: float) -> None:
    """Poll /proc until ``ident`` is gone or ``timeout_s`` passed (no event exists for a
    process that is not our child)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout_s, 0.0)
    while loop.time() < deadline:
        if not identity_alive(ident):
            return
        await asyncio.sleep(_POLL_S)


def boot_id() -> str:
    """This host's current boot, so a recorded pid is only ever matched on the host and boot
    where it was recorded (several spokeds on different hosts may share one Redis)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def self_identity() -> ProcessIdentity:
    """This process, as a ProcessIdentity (recorded so a successor can tell it is gone)."""
    pid = os.getpid()
    return ProcessIdentity(pid, os.getpgrp(), read_start_ticks(pid) or UNKNOWN_START_TICKS)


def process_alive(pid: int, start_ticks: int) -> bool:
    """True if ``pid`` runs and started at ``start_ticks`` (not a reused pid)."""
    stat = _read_stat(pid)
    return stat is not None and stat[2] == start_ticks and stat[0] not in ("Z", "X", "x")


def group_remnants(pgid: int, agent_id: str) -> list[int]:
    """Live members of process group ``pgid`` that carry ``HUBSPOKE_AGENT_ID=agent_id`` in
    their environment: what is left of an agent whose leader is gone (it may have died of
    SIGPIPE when its spoke died). Both must match, so an unrelated process that reused the
    pgid is never picked."""
    marker = f"HUBSPOKE_AGENT_ID={agent_id}".encode()
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is None or stat[1] != pgid or stat[0] in ("Z", "X", "x"):
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if marker in env:
            found.append(int(entry))
    return found


async def kill_remnants(pgid: int, agent_id: str, grace_s: float) -> int:
    """SIGTERM, then after ``grace_s`` SIGKILL, each process :func:`group_remnants` finds
    (by pid: the group itself is never signalled, since its leader's identity is gone).
    Returns how many there were."""
    if not _may_signal(pgid):
        return 0
    first = group_remnants(pgid, agent_id)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in group_remnants(pgid, agent_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (grace_s if sig is signal.SIGTERM else KILL_WAIT_S)
        # Polling: no event exists for the end of a process that is not our child.
        while loop.time() < deadline:
            if not group_remnants(pgid, agent_id):
                break
            await asyncio.sleep(_POLL_S)
    if first:
        _log.info("killed_agent_remnants", pgid=pgid, count=len(first))
    return len(first)


async def kill_identity(ident: ProcessIdentity, grace_s: float) -> bool:
    """Crash recovery: stop a process group recorded earlier, if it is still the same.

    If :func:`identity_alive`, SIGTERM the group, poll until the process is gone or
    ``grace_s`` passed, then SIGKILL the group (also when the leader left during the
    grace period, so its group members die too). Returns True if it was alive.
    A pid whose start_ticks do not match is never signalled.
    """
    if not identity_alive(ident):
        return False
    if not _may_signal(ident.pgid):
        _log.error("refusing_to_kill_identity", pid=ident.pid, pgid=ident.pgid)
        return False
    _log.info("killing_stray_agent", pid=ident.pid, pgid=ident.pgid)
    signal_group(ident.pgid, signal.SIGTERM)
    await _wait_gone(ident, grace_s)
    # Either the leader is still alive (checked just now), or it vanished within the
    # last poll interval; its pgid cannot have been reused while group members remain.
    signal_group(ident.pgid, signal.SIGKILL)
    await _wait_gone(ident, KILL_WAIT_S)
    return True
