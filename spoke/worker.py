"""The worker pool: takes agents off the bullmq queue and runs them through the runtime.

One ``AgentWorker`` per spoked process; many may share one Redis. Each job is an agent id;
the record in Redis, not the job, says what to run and whether it may still run:

* a record already final (killed while queued) is skipped;
* a record STARTING/RUNNING was held by a worker that died: bullmq's stalled-job check
  handed it back. The old process group is killed (matched by pid *and* start time), then
  the agent is retried if its profile is retry-safe and attempts remain, else FAILED/LOST;
* an agent not started by its start deadline (acceptance + start_within, spoke/deadline.py)
  never starts: it ends EXPIRED (NOT_STARTED). A retry of an agent that did start in time is
  not held to it (the deadline bounds the wait for the first start, not the retries);
* a record that does not match the signed spawn kept with it, or whose spawn no longer
  verifies with the trust store, never starts (FAILED/TAMPERED, spoke/reverify.py): what runs
  is what the client signed, not what Redis holds;
* the run mode (spoke/modes.py) is decided as it starts: a shadow-mode agent goes on from
  STARTING to SHADOWED and nothing runs; a synthetic-mode one runs the synthetic agent.

Kills arrive on a pub/sub channel every worker listens to, with a once-a-second check of
the record as a fallback; the worker that holds the agent terminates its process group.
bullmq renews the job lock on its own task, so output handling never delays it.

With ``supervise`` (the default) each attempt runs under a supervisor of its own that
outlives spoked (spoke/supervisor.py): a job handed back while its agent's supervisor still
runs, or after it wrote the agent's exit, is re-attached (the record is adopted, output read
on from the recorded offsets, the real exit recorded), never retried nor failed LOST; only a
held agent with neither goes through the recovery above. On shutdown running agents are left
running (``leave_agents_on_shutdown``): their jobs stay active and the next spoked's stall
check hands them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from bullmq.custom_errors import DelayedError, UnrecoverableError
from redis.exceptions import RedisError

from hubspoke.trust import TrustStore

from . import approvals, inbox, modes, processes, reverify, runtime
from .backend import BackendError, QueueError, TransitionError
from .config import SpokeConfig
from .events import OutputPump
from .inbox_delivery import AgentInbox
from .jobs import WorkerSettings
from .model import NOT_STARTED, AgentRecord, AgentState
from .outcome import decide, receipt_json
from .output import parse_receipt
from .profiles import Profile
from .queue import AgentQueue
from .runmode import Mode, effective_mode
from .supervised_run import AgentRun, SupervisedRuns, running_fields

log = structlog.get_logger("hubspoke.spoke.worker")

KILL_POLL_S = 1.0
"""Fallback check of kill requests, should a pub/sub message be missed."""

SLOT_RETRY_MS = 500
"""How soon an agent whose profile is at its concurrency limit is looked at again."""

RETRYABLE = frozenset({AgentState.FAILED, AgentState.TIMED_OUT})

RECORD_END_WAIT_S = 30.0
"""How long a finished attempt's outcome is held while Redis is unreachable."""


class AttemptFailedError(Exception):
    """Raised to bullmq when an attempt failed and another is allowed: it backs off and
    hands the job back (the record is already RETRYING)."""


class AgentWorker(SupervisedRuns):
    """Runs agents for one spoke process. ``run()`` until ``shutdown()``."""

    def __init__(self, queue: AgentQueue, config: SpokeConfig, trust: TrustStore) -> None:
        self.queue = queue
        self.config = config
        self.trust = trust
        """Checks each record's signed spawn again before every start."""
        self.worker_id = uuid.uuid4().hex[:12]
        self._boot = processes.boot_id()
        self._me = processes.self_identity()
        self._kill_events: dict[str, asyncio.Event] = {}
        self._owned: dict[str, tuple[str, int]] = {}
        """Agents this worker started: (worker id, attempt), guarding every later change."""
        self._inboxes: dict[str, AgentInbox] = {}
        """The inbox of each agent this worker starts (spoke/inbox_delivery.py)."""
        self._init_supervision()  # spoke/supervised_run.py
        queue.jobs.handoff.configure(config.start_handoff_ms, config.start_handoff_max)
        self._worker: Any = None  # bullmq.Worker, untyped
        self._stopped = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False

    @property
    def running_agents(self) -> list[str]:
        return list(self._kill_events)

    async def run(self) -> None:
        if self._closing:  # shut down before it started
            return
        bull = self.queue.jobs.worker(
            self._process,
            WorkerSettings(
                name=f"spoke-{self.config.name}-{self.worker_id}",
                concurrency=self.config.concurrency,
                lock_duration_ms=self.config.lock_duration_ms,
                stalled_interval_ms=self.config.stalled_interval_ms,
            ),
        )
        self._worker = bull.worker
        try:
            # Without this, bullmq rounds delays and backoffs up to whole seconds (PITFALLS).
            await self._worker.blockingRedisConnection.getRedisVersion()
            with contextlib.suppress(QueueError):
                await self.reap_dead_local_workers()
        finally:
            self._ready.set()  # shutdown waits for this: closing mid-start-up leaks sockets
        listener = asyncio.create_task(self._listen_for_kills(), name="kill-listener")
        runner = asyncio.create_task(self._worker.run(), name="bullmq-worker")
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            done, _ = await asyncio.wait({runner, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done and not self._closing:
                runner.result()  # a crashed worker loop must not go unnoticed
                raise RuntimeError("bullmq worker loop ended unexpectedly")
        finally:
            for t in (listener, stopped):
                t.cancel()
            # A shutdown that came before the bullmq worker existed did not close it: its
            # jobs are all done by now (or force-killed), so close it here, connections too.
            if not self._worker.closed:
                await self._worker.close(force=True)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(runner, timeout=5)
            await bull.connection.aclose()

    async def shutdown(self, drain_s: float = 10.0, *, leave: bool = False) -> None:
        """Stop taking jobs; give running agents ``drain_s``, then kill them. With ``leave``
        (and ``supervise``), leave them running instead: an upgrade, the next spoked
        re-attaches."""
        if self._closing:
            return
        self._closing = True
        if leave and self.config.supervise:
            await self._detach_all(drain_s)
            return
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout=drain_s)
            close = asyncio.create_task(self._worker.close())
            done, _ = await asyncio.wait({close}, timeout=drain_s)
            if not done:
                log.warning("shutdown_killing_agents", agents=self.running_agents)
                for ev in self._kill_events.values():
                    ev.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(close, timeout=drain_s)
        self._stopped.set()

    # --- kills -------------------------------------------------------------

    async def _listen_for_kills(self) -> None:
        """Kill requests by pub/sub, resubscribing after Redis trouble (meanwhile the 1 s
        poll of each running agent's record still sees every kill)."""
        while True:
            try:
                async with self.queue.kills.requests() as pubsub:
                    while True:
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if msg and isinstance(msg.get("data"), str):
                            ev = self._kill_events.get(msg["data"])
                            if ev is not None:
                                ev.set()
            except (RedisError, OSError) as exc:
                log.warning("kill_listener_reconnecting", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _poll_kill(self, agent_id: str, ev: asyncio.Event, profile: Profile) -> None:
        """Fallback kill check, and renewal of the profile slot lease while it runs."""
        while not ev.is_set():
            await asyncio.sleep(KILL_POLL_S)
            with contextlib.suppress(QueueError):
                if await self.queue.worker_records.kill_requested(agent_id):
                    ev.set()
                if agent_id in self._inboxes:  # messages kept since: into its inbox
                    await self._inboxes[agent_id].poll()
                if agent_id in self._supervised:  # how far its output files are read
                    await self._save_offsets(agent_id, self._supervised[agent_id])
                if profile.max_concurrency:
                    await self.queue.slots.acquire(
                        profile.name,
                        agent_id,
                        profile.max_concurrency,
                        self.config.lock_duration_ms,
                    )

    # --- jobs --------------------------------------------------------------

    async def _process(self, job: Any, token: str) -> str:
        agent_id = str(job.data.get("agent_id", ""))
        structlog.contextvars.bind_contextvars(job=agent_id, worker=self.worker_id)
        try:
            return await self._run(agent_id, job, token)
        except (asyncio.CancelledError, AttemptFailedError, UnrecoverableError, DelayedError):
            raise
        except TransitionError as exc:
            # Someone else changed the agent first (a kill, or a worker that took over an
            # attempt we held while paused): theirs is the newer truth, leave it be.
            log.warning("agent_superseded", state=exc.current)
            return "superseded"
        except Exception:
            log.exception("agent_job_failed")
            owner = self._owned.get(agent_id)
            with contextlib.suppress(QueueError):
                if owner is None:
                    waiting = [AgentState.QUEUED, AgentState.RETRYING]
                    await self.queue.worker_records.transition(
                        agent_id, waiting, AgentState.FAILED, "INTERNAL"
                    )
                else:
                    held = [AgentState.STARTING, AgentState.RUNNING]
                    await self.queue.worker_records.transition(
                        agent_id, held, AgentState.FAILED, "INTERNAL", owner=owner
                    )
            return "internal-error"
        finally:
            self._owned.pop(agent_id, None)
            self._supervised.pop(agent_id, None)
            self._admitted.discard(agent_id)
            inbox = self._inboxes.pop(agent_id, None)
            if inbox is not None and not self._detaching:  # a detached agent still reads it
                inbox.close()
            structlog.contextvars.unbind_contextvars("job", "worker")

    async def _run(self, agent_id: str, job: Any, token: str) -> str:
        rec, copies = await self._read(agent_id)
        if rec is None or rec.state.final:
            return "skipped"
        profile = self.config.profiles.get(rec.profile)
        if rec.state in (AgentState.STARTING, AgentState.RUNNING):
            if self.config.supervise:  # its supervisor may outlive the spoked that died
                attached = await self._reattach(rec, profile)
                if attached is not None:
                    return attached
            if not await self._recover(rec, profile):
                raise UnrecoverableError("LOST")  # into the dead-letter set, replayable
            rec = await self.queue.worker_records.get(agent_id)
        waiting = [AgentState.QUEUED, AgentState.RETRYING]
        try:
            rec = await self._verified(rec, profile, copies)
        except reverify.TamperedError as exc:
            log.warning("agent_tampered", check=exc.what)
            await self.queue.worker_records.transition(
                agent_id, waiting, AgentState.FAILED, reverify.TAMPERED
            )
            raise UnrecoverableError(reverify.TAMPERED) from exc
        if profile is None:
            await self.queue.worker_records.transition(
                agent_id, waiting, AgentState.FAILED, "UNKNOWN_PROFILE"
            )
            raise UnrecoverableError("UNKNOWN_PROFILE")
        if rec.state == AgentState.QUEUED and rec.expire_ms and time.time() * 1000 > rec.expire_ms:
            await self.queue.worker_records.transition(
                agent_id, [AgentState.QUEUED], AgentState.EXPIRED, NOT_STARTED
            )
            raise UnrecoverableError(NOT_STARTED)
        if self._adoptions_fill_slots(agent_id):  # spoke/supervised_run.py
            await job.moveToDelayed(int(time.time() * 1000) + SLOT_RETRY_MS, token)
            raise DelayedError  # a predecessor's agents still run here: they come first
        lease_ms = self.config.lock_duration_ms
        limit = profile.max_concurrency
        if limit and not await self.queue.slots.acquire(profile.name, agent_id, limit, lease_ms):
            await job.moveToDelayed(int(time.time() * 1000) + SLOT_RETRY_MS, token)
            raise DelayedError  # stays QUEUED: waits for a slot, never refused
        try:
            return await self._start(rec, profile)
        finally:
            if limit:
                with contextlib.suppress(QueueError):
                    await self.queue.slots.release(profile.name, agent_id)

    async def _read(self, agent_id: str) -> tuple[AgentRecord | None, tuple[bytes, bytes]]:
        """The record and the signed copies it is checked against before it starts
        (_verified): as this process's spawn handler just stored them (spoke/start_handoff.py),
        else both read at once (one round trip's wait, not two)."""
        handed = self.queue.jobs.handoff.take(agent_id)
        if handed is not None:
            return handed.record, handed.copies
        return await asyncio.gather(
            self.queue.worker_records.get_or_none(agent_id),
            self.queue.worker_records.signed_copies(agent_id),
        )

    async def _verified(
        self, rec: AgentRecord, profile: Profile | None, copies: tuple[bytes, bytes]
    ) -> AgentRecord:
        """The record as this attempt may run it, checked against its signed spawn
        (``copies``: the envelope and relay stored with it, Records.signed_copies)."""
        stored, relay = copies
        if rec.approvals_required:  # the approvals that released it verify too
            kept = await approvals.kept_approvals(self.queue.worker_records, rec)
            approvals.verify_kept(rec, kept, spoke=self.config.name, trust=self.trust)
        return reverify.verified_record(
            rec, stored, relay, spoke=self.config.name, trust=self.trust, profile=profile
        )

    async def _start(self, rec: AgentRecord, profile: Profile) -> str:
        agent_id = rec.agent_id
        waiting = [AgentState.QUEUED, AgentState.RETRYING]
        attempt = rec.attempt + 1
        mode = effective_mode(self.config.run_mode, profile.mode)
        try:
            await self.queue.worker_records.transition(
                agent_id,
                waiting,
                AgentState.STARTING,
                fields={
                    "mode": mode.value,
                    "attempt": attempt,
                    "worker": self.worker_id,
                    "boot_id": self._boot,
                    "spoked_pid": self._me.pid,
                    "spoked_ticks": self._me.start_ticks,
                },
            )
        except TransitionError:
            return "skipped"  # killed between our read and now
        self._owned[agent_id] = (self.worker_id, attempt)
        if mode is Mode.SHADOW:  # spoke/modes.py: record what would run, start nothing
            return await modes.shadow(self.queue.worker_records, rec, profile, self.worker_id)
        if mode is Mode.SYNTHETIC:
            profile = modes.synthetic_stand_in(profile)
        return await self._execute(rec, profile, attempt)

    async def reap_dead_local_workers(self) -> int:
        """Start-up: recover agents whose spoked process on this host is gone, before taking
        any job, so a restarted spoke never runs new agents beside its predecessor's
        orphans. bullmq hands their jobs back later; the records then say what to do."""
        reaped = 0
        for rec in await self.queue.worker_records.held_agents():
            if rec.boot_id != self._boot or rec.spoked_pid is None or rec.spoked_ticks is None:
                continue  # another host's or boot's: its own spoked, or the stall check
            if processes.process_alive(rec.spoked_pid, rec.spoked_ticks):
                continue  # a live spoked on this host holds it
            if self.config.supervise and self._locate(rec) is not None:
                self._expect_adoption(rec.agent_id)  # counted in concurrency from now on
                continue  # its supervisor runs on or wrote the exit: re-attached with its job
            with contextlib.suppress(TransitionError):
                await self._recover(rec, self.config.profiles.get(rec.profile))
                reaped += 1
        if reaped:
            log.warning("reaped_agents_of_dead_spoked", count=reaped)
        if self.config.supervise and await self._sweep_states():
            log.warning("swept_unheld_agent_states")
        return reaped

    async def _recover(self, rec: AgentRecord, profile: Profile | None) -> bool:
        """A worker died holding this agent. Kill what is left; retry only if safe."""
        if rec.boot_id and rec.boot_id != self._boot:
            # Its pids belong to another host or boot: never signal them from here.
            log.warning("recovery_orphan_elsewhere", boot_id=rec.boot_id, pid=rec.pid)
        elif rec.pid and rec.pgid and rec.start_ticks is not None:
            ident = processes.ProcessIdentity(rec.pid, rec.pgid, rec.start_ticks)
            grace = profile.kill_grace_s if profile else 2.0
            if await processes.kill_identity(ident, grace):
                log.warning("recovery_killed_orphan", pid=rec.pid)
            # The leader may be gone (SIGPIPE when its spoke died) while children live on.
            if await processes.kill_remnants(rec.pgid, rec.agent_id, grace):
                log.warning("recovery_killed_remnants", pgid=rec.pgid)
        held = [AgentState.STARTING, AgentState.RUNNING]
        lost_owner = (rec.worker, rec.attempt)  # if it moved meanwhile, that is not ours
        if profile is not None and profile.retry_safe and rec.attempt < rec.max_attempts:
            await self.queue.worker_records.transition(
                rec.agent_id, held, AgentState.RETRYING, "LOST", owner=lost_owner
            )
            log.info("recovery_retrying", attempt=rec.attempt)
            return True
        await self.queue.worker_records.transition(
            rec.agent_id, held, AgentState.FAILED, "LOST", owner=lost_owner
        )
        log.info("recovery_lost", attempt=rec.attempt)
        return False

    async def _execute(self, rec: AgentRecord, profile: Profile, attempt: int) -> str:
        agent_id = rec.agent_id
        pump = OutputPump(self.queue.worker_records, agent_id)
        try:
            inbox = AgentInbox(self.queue.worker_inboxes, self.config, profile, agent_id)
            self._inboxes[agent_id] = inbox
            proc = await self._start_process(
                rec, profile, attempt, pump, await inbox.prepare(rec.inputs)
            )
        except runtime.AgentStartError as exc:
            await self.queue.worker_records.transition(
                agent_id,
                [AgentState.STARTING],
                AgentState.FAILED,
                "START_FAILED",
                {"stderr_tail": str(exc)[:1000]},
                owner=(self.worker_id, attempt),
            )
            raise UnrecoverableError("START_FAILED") from exc
        timeout_s = (rec.timeout_ms or int(profile.timeout_s * 1000)) / 1000
        running = running_fields(proc)
        return await self._run_agent(rec, profile, proc, pump, attempt, timeout_s, running)

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
        """Watch a started (or re-attached) attempt to its end and record it; ``running``:
        the fields of its STARTING → RUNNING edge, None when it is RUNNING already."""
        agent_id = rec.agent_id
        kill = asyncio.Event()
        self._kill_events[agent_id] = kill
        outcome = "exit"
        try:
            if running is not None:
                await self.queue.worker_records.transition(
                    agent_id,
                    [AgentState.STARTING],
                    AgentState.RUNNING,
                    fields=running,
                    owner=(self.worker_id, attempt),
                )
                log.info("agent_running", pid=proc.pid, attempt=attempt)
            outcome = await self._supervise(proc, kill, agent_id, timeout_s, profile)
            if outcome != "exit":
                await proc.terminate(profile.kill_grace_s)
        except BaseException:
            # Never leave an agent running unsupervised (cancellation, Redis failure, …),
            # unless it has a supervisor and spoked is being upgraded.
            if not await asyncio.shield(self._detached(agent_id, proc, pump)):
                await asyncio.shield(proc.terminate(profile.kill_grace_s))
            raise
        finally:
            self._kill_events.pop(agent_id, None)
        code = await proc.wait()
        await pump.close()
        return await self._finish(rec, proc, code, outcome, attempt)

    async def _supervise(
        self,
        proc: AgentRun,
        kill: asyncio.Event,
        agent_id: str,
        timeout_s: float,
        profile: Profile,
    ) -> str:
        if await self.queue.worker_records.kill_requested(agent_id):
            return "killed"
        waiter = asyncio.create_task(proc.wait())
        killer = asyncio.create_task(kill.wait())
        poller = asyncio.create_task(self._poll_kill(agent_id, kill, profile))
        try:
            done, _ = await asyncio.wait(
                {waiter, killer}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for t in (killer, poller):
                t.cancel()
            waiter.cancel()  # wait() keeps watching the process; cancelling only drops us
        if waiter in done:
            return "exit"
        return "killed" if killer in done else "timeout"

    async def _finish(
        self, rec: AgentRecord, proc: AgentRun, code: int, outcome: str, attempt: int
    ) -> str:
        stdout = proc.stdout.text()
        receipt = parse_receipt(stdout, self.config.max_receipt_bytes)
        fields: dict[str, object] = {
            "exit_code": code,
            "stdout_tail": stdout,
            "stderr_tail": proc.stderr.text(),
            "receipt": receipt_json(receipt),
        }
        if receipt is not None and receipt.error:
            log.warning("agent_receipt_unreadable", error=receipt.error)
        if outcome == "killed":
            state, reason = AgentState.KILLED, "KILL_REQUESTED"
        elif outcome == "timeout":
            state, reason = AgentState.TIMED_OUT, "TIMEOUT"
        else:  # it exited by itself: the exit code and receipt decide (spoke/outcome.py)
            grace_ms = int(self.config.verification_grace_s * 1000)
            decided = decide(code, receipt, int(time.time() * 1000), grace_ms)
            state, reason = decided.state, decided.reason
            fields.update(decided.fields)
        if state in RETRYABLE and attempt < rec.max_attempts:
            await self._record_end(rec.agent_id, AgentState.RETRYING, reason, fields, attempt, proc)
            log.info("agent_retrying", reason=reason, exit_code=code, attempt=attempt)
            raise AttemptFailedError(reason)  # bullmq backs off, then hands the job back
        if state in RETRYABLE:
            if rec.max_attempts > 1:
                state = AgentState.DEAD_LETTERED
            await self._record_end(rec.agent_id, state, reason, fields, attempt, proc)
            log.info("agent_finished", state=state.value, reason=reason, exit_code=code)
            raise UnrecoverableError(reason)  # bullmq's failed set is the dead-letter set
        await self._record_end(rec.agent_id, state, reason, fields, attempt, proc)
        log.info("agent_finished", state=state.value, reason=reason, exit_code=code)
        if state is AgentState.NEEDS_INPUT:
            await self._answered_meanwhile(rec.agent_id)
        return state.value

    async def _answered_meanwhile(self, agent_id: str) -> None:
        """NEEDS_INPUT, but a message this attempt never got is waiting: it answers now."""
        held = self._inboxes.get(agent_id)
        seq = await held.unread() if held is not None else 0
        if seq:
            await inbox.resume(self.queue.worker_records, self.queue.jobs, agent_id, seq)

    async def _record_end(
        self,
        agent_id: str,
        state: AgentState,
        reason: str,
        fields: dict[str, object],
        attempt: int,
        proc: AgentRun | None = None,
    ) -> None:
        """Record how an attempt ended. The outcome is known only here, so a Redis outage
        is waited out (up to RECORD_END_WAIT_S) rather than losing it."""
        deadline = time.monotonic() + RECORD_END_WAIT_S
        while True:
            try:
                await self.queue.worker_records.transition(
                    agent_id,
                    [AgentState.RUNNING],
                    state,
                    reason,
                    fields,
                    owner=(self.worker_id, attempt),
                )
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                log.warning("record_end_waiting_for_redis", state=state.value)
                await asyncio.sleep(1.0)
            else:
                if proc is not None:
                    self._forget_attempt(proc)
                return
