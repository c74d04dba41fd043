"""The worker's side of supervised agents (spoke/supervisor.py): start, re-attach, detach.

A mixin of :class:`~hubspoke.spoke.worker.AgentWorker`, kept apart so the worker stays
readable. What it adds:

* :meth:`SupervisedRuns._start_process`: an attempt starts under a supervisor (``supervise``)
  or, without, as a child of spoked holding its pipes (spoke/runtime.py);
* :meth:`SupervisedRuns._reattach`: a job handed back (a restarted spoked, or bullmq's stall
  check after the holder's lock lapsed) whose attempt's supervisor is alive or wrote the
  exit: adopt the record, read the output on from the recorded offsets and record the real
  exit. Neither: None, and the worker's recovery rule (retry if safe, else LOST) applies;
* :meth:`SupervisedRuns._detach_all`: shut down leaving running agents running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import structlog

from . import processes, runtime, supervisor, supervisor_records
from .backend import QueueError
from .config import SpokeConfig
from .events import OutputPump
from .inbox_delivery import AgentInbox
from .model import AgentRecord, AgentState
from .profiles import Profile
from .queue import AgentQueue
from .supervisor_cgroup import CgroupSupport, detect

__all__ = ["AgentRun", "SupervisedRuns", "running_fields"]

log = structlog.get_logger("hubspoke.spoke.worker")

STRAY_GRACE_S = 2.0
"""SIGTERM to SIGKILL, for an agent left running whose attempt no record holds."""
ADOPTION_SLACK_S = 5.0
"""How much longer than the stall bound a predecessor's agent is waited for."""

AgentRun = runtime.AgentProcess | supervisor.SupervisedAgent
"""An attempt the worker watches: a child holding pipes, or a supervised agent."""


def _resume_inbox(inbox: AgentInbox, rec: AgentRecord) -> None:
    """A re-attached attempt's inbox: count what its predecessor wrote already (a file's
    last line; for a FIFO every message kept so far, so none is written twice)."""
    delivered = rec.inputs
    if inbox.file.kind == "file":
        delivered = 0
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lines = inbox.file.path.read_bytes().splitlines()
            if lines:
                delivered = int(json.loads(lines[-1])["seq"])
    inbox.file._delivered = delivered


class SupervisedRuns:
    """Mixin of AgentWorker (module docstring)."""

    queue: AgentQueue
    config: SpokeConfig
    worker_id: str
    _boot: str
    _me: processes.ProcessIdentity
    _owned: dict[str, tuple[str, int]]
    _kill_events: dict[str, asyncio.Event]
    _inboxes: dict[str, AgentInbox]
    _worker: Any
    _ready: asyncio.Event
    _stopped: asyncio.Event

    def _init_supervision(self) -> None:
        self._supervised: dict[str, supervisor.SupervisedAgent] = {}
        """The supervised agents this worker watches, for their output offsets."""
        self._state_root = supervisor.state_root(
            self.config.agent_state_dir, self.config.name, self.config.redis_url
        )
        self._cgroups = detect() if self.config.supervise else CgroupSupport(None, "supervise off")
        self._detaching = False
        """Shutting down with running agents left running (``leave_agents_on_shutdown``)."""
        self._admitted: set[str] = set()
        """New starts past the concurrency check, until their job ends."""
        self._adoptable: dict[str, float] = {}
        """A dead predecessor's supervised agents found at start-up, until their jobs come
        back: agent id → when to stop counting it (the stall bound, and some)."""
        if self.config.supervise:
            log.info(
                "agent_supervisors",
                state_dir=str(self._state_root),
                cgroups=str(self._cgroups.base or ""),
                no_cgroups=self._cgroups.reason,
            )

    async def _run_agent(
        self,
        rec: AgentRecord,
        profile: Profile,
        proc: AgentRun,
        pump: OutputPump,
        attempt: int,
        timeout_s: float,
        running: Mapping[str, object] | None,
    ) -> str:
        raise NotImplementedError  # AgentWorker's

    async def _start_process(
        self,
        rec: AgentRecord,
        profile: Profile,
        attempt: int,
        pump: OutputPump,
        extra_env: Mapping[str, str],
    ) -> AgentRun:
        if not self.config.supervise:
            return await runtime.start_agent(
                profile,
                task=rec.task,
                agent_id=rec.agent_id,
                attempt=attempt,
                on_output=pump.feed,
                tail_bytes=self.config.output_tail_bytes,
                extra_env=extra_env,
            )
        proc = await supervisor.start_supervised(
            profile,
            task=rec.task,
            agent_id=rec.agent_id,
            attempt=attempt,
            root=self._state_root,
            cgroups=self._cgroups,
            on_output=pump.feed,
            tail_bytes=self.config.output_tail_bytes,
            extra_env=extra_env,
        )
        self._supervised[rec.agent_id] = proc
        return proc

    def _locate(self, rec: AgentRecord, sup_ticks: int | None = None) -> supervisor.Located | None:
        if rec.boot_id and rec.boot_id != self._boot:
            return None  # another host's or boot's pids and files
        return supervisor.locate(self._state_root, rec.agent_id, rec.attempt, sup_ticks)

    def _expect_adoption(self, agent_id: str) -> None:
        bound_s = (self.config.lock_duration_ms + 3 * self.config.stalled_interval_ms) / 1000
        self._adoptable[agent_id] = time.monotonic() + bound_s + ADOPTION_SLACK_S

    def _adoptions_fill_slots(self, agent_id: str) -> bool:
        """Whether this new start must wait: the agents starting or running here plus the
        predecessor's agents not yet re-attached fill ``concurrency`` (so a restart never
        runs more). Otherwise it counts as starting from now on."""
        if self._adoptable:
            now = time.monotonic()
            for waiting, until in list(self._adoptable.items()):
                if until < now:
                    del self._adoptable[waiting]
            here = len(self._admitted | self._kill_events.keys())
            if here + len(self._adoptable) >= self.config.concurrency:
                return True
        self._admitted.add(agent_id)
        return False

    async def _reattach(self, rec: AgentRecord, profile: Profile | None) -> str | None:
        """Take over a held attempt whose supervisor runs on or wrote the exit (module
        docstring); None if it has neither, or its profile is gone."""
        self._adoptable.pop(rec.agent_id, None)
        if profile is None or rec.attempt < 1:
            return None
        records = self.queue.worker_records
        fields = await supervisor_records.read_fields(records, rec.agent_id)
        found = self._locate(rec, fields.sup_ticks)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + supervisor.PID_WAIT_S
        while found is not None and found.agent is None and loop.time() < deadline:
            await asyncio.sleep(0.05)  # its supervisor is just starting the agent
            found = self._locate(rec, fields.sup_ticks)
        if found is None or found.agent is None:
            return None
        attempt = rec.attempt
        me = (self._me.pid, self._me.start_ticks)
        if not await supervisor_records.adopt(
            records, rec.agent_id, (rec.worker, attempt), self.worker_id, me
        ):
            return "superseded"
        self._owned[rec.agent_id] = (self.worker_id, attempt)
        log.warning(
            "agent_reattached",
            pid=found.agent.pid,
            supervisor=found.supervisor.pid,
            exited=found.exit_status is not None,
            attempt=attempt,
        )
        pump = OutputPump(records, rec.agent_id)
        proc = supervisor.SupervisedAgent(
            found.dir,
            found.supervisor,
            found.agent,
            on_output=pump.feed,
            tail_bytes=self.config.output_tail_bytes,
            offsets=(fields.out_offset, fields.err_offset),
        )
        self._supervised[rec.agent_id] = proc
        inbox = AgentInbox(self.queue.worker_inboxes, self.config, profile, rec.agent_id)
        _resume_inbox(inbox, rec)
        self._inboxes[rec.agent_id] = inbox
        timeout_ms = rec.timeout_ms or int(profile.timeout_s * 1000)
        started = rec.start_ms or int(time.time() * 1000)
        left_s = max(0.0, (started + timeout_ms - time.time() * 1000) / 1000)
        running = None
        if rec.state is AgentState.STARTING:  # its spoked died before recording RUNNING
            running = running_fields(proc)
        try:
            return await self._run_agent(rec, profile, proc, pump, attempt, left_s, running)
        finally:
            if profile.max_concurrency:  # its slot, renewed while it ran
                with contextlib.suppress(QueueError):
                    await self.queue.slots.release(profile.name, rec.agent_id)

    async def _sweep_states(self) -> int:
        """Start-up: state directories of attempts no record holds any more (ended, or taken
        over by a spoked on another host while this one was down): what still runs there is
        killed (by pid and start time), the directory removed. How many."""
        try:
            entries = sorted(os.listdir(self._state_root))
        except OSError:
            return 0
        swept = 0
        for entry in entries:
            agent_id, _, number = entry.rpartition(".")
            if not agent_id or not number.isdigit():
                continue
            rec = await self.queue.worker_records.get_or_none(agent_id)
            if rec is None:
                continue  # not this site's (a directory shared with another), or long gone
            held = (AgentState.STARTING, AgentState.RUNNING, AgentState.RETRYING)
            if rec.state in held and rec.attempt <= int(number):
                continue  # its attempt (or one being started or recorded) is alive
            found = supervisor.locate(self._state_root, agent_id, int(number), None)
            if found is not None and found.exit_status is None and found.agent is not None:
                log.warning("killing_unheld_supervised_agent", agent=agent_id, pid=found.agent.pid)
                await processes.kill_identity(found.agent, STRAY_GRACE_S)
            supervisor.remove_state(self._state_root / entry)
            swept += 1
        return swept

    async def _save_offsets(self, agent_id: str, proc: supervisor.SupervisedAgent) -> None:
        out, err = proc.offsets
        await supervisor_records.save_offsets(
            self.queue.worker_records, agent_id, self.worker_id, out, err
        )

    async def _detached(self, agent_id: str, proc: AgentRun, pump: OutputPump) -> bool:
        """On shutdown with ``leave_agents_on_shutdown``: stop watching a supervised agent
        (it runs on), its output so far recorded; False if it must be killed instead."""
        if not self._detaching or not isinstance(proc, supervisor.SupervisedAgent):
            return False
        proc.detach()
        with contextlib.suppress(QueueError, asyncio.CancelledError):
            await pump.close()
            await self._save_offsets(agent_id, proc)
        log.info("agent_left_running", pid=proc.pid)
        return True

    async def _detach_all(self, wait_s: float) -> None:
        """Stop taking jobs and stop watching running agents, leaving them running: their
        jobs stay active in bullmq (no lock renewed), so the next spoked's stall check hands
        them back and it re-attaches (an upgrade through SIGTERM)."""
        self._detaching = True
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout=wait_s)
            log.info("shutdown_leaving_agents", agents=len(self._supervised))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._worker.close(force=True), timeout=wait_s)
        self._stopped.set()

    def _forget_attempt(self, proc: AgentRun) -> None:
        """Its end is recorded: remove a supervised attempt's state directory and cgroup."""
        if isinstance(proc, supervisor.SupervisedAgent):
            proc.cleanup()


def running_fields(proc: AgentRun) -> dict[str, object]:
    """What the RUNNING edge records of an attempt's processes."""
    ident = proc.identity
    fields: dict[str, object] = {
        "pid": ident.pid,
        "pgid": ident.pgid,
        "start_ticks": ident.start_ticks,
        "start_ms": int(time.time() * 1000),
    }
    if isinstance(proc, supervisor.SupervisedAgent):
        fields["sup_pid"] = proc.supervisor.pid
        fields["sup_ticks"] = proc.supervisor.start_ticks
    return fields
