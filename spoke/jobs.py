"""The bullmq side of the spoke: every call into bullmq, the Worker factory included.

The job queue is bullmq (BullMQ's own scripts, so Node tooling can read a spoke's queue).
A job carries only an agent id; the agent's record (spoke/records.py) says what to run.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from bullmq import Job, Queue

from hubspoke.redis_access import RedisAccess

from . import bull_args
from .backend import backend, bullmq_client, now_ms
from .bull_worker import SpokeWorker
from .keys import QUEUE_NAME, SpokeKeys
from .model import AgentRecord
from .start_handoff import StartHandoff

JOB_ATTEMPTS = 64
"""bullmq's own attempt cap per job. Our record decides whether an agent retries (the worker
raises UnrecoverableError on a final failure), so bullmq must never give up first."""

BACKOFF_TYPE = "jittered"
"""Our backoff strategy's name in bullmq job options (see ``jittered_backoff``)."""

BACKOFF_CAP_MS = 5 * 60 * 1000

WAITING = ("wait", "paused", "prioritized", "delayed")
"""bullmq's sets of jobs not yet taken by a worker."""

Processor = Callable[[Any, str], Awaitable[str]]
"""A bullmq job handler: (job, lock token) → result."""


@dataclass(frozen=True, slots=True)
class QueueCounts:
    waiting: int
    delayed: int
    active: int
    completed: int
    failed: int
    paused: bool
    workers: int


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a bullmq Worker of this spoke is built with (see ``Jobs.worker``)."""

    name: str
    concurrency: int
    lock_duration_ms: int
    stalled_interval_ms: int


@dataclass(frozen=True, slots=True)
class BullWorker:
    """A bullmq Worker (untyped) and the connection it was built on, closed after it."""

    worker: Any
    connection: aioredis.Redis


def priority_to_bullmq(priority: int) -> int:
    """Ours: 10 most urgent. bullmq: 1 runs first, and unprioritised jobs jump the queue,
    so every job gets an explicit priority (PITFALLS)."""
    return 11 - priority


def jittered_backoff(attempts_made: int, _type: str, _err: object, job: Any) -> int:
    """bullmq backoff strategy: exponential from the job's base delay, with equal jitter
    (between half and all of the exponential step), capped at BACKOFF_CAP_MS."""
    base = int((job.opts.get("backoff") or {}).get("delay", 1000))
    step = min(base * 2 ** max(attempts_made - 1, 0), BACKOFF_CAP_MS)
    return int(step / 2 + random.random() * step / 2)  # noqa: S311 - jitter, not a secret


PRIORITIZED_KEYS = [
    "marker",
    "meta",
    "id",
    "prioritized",
    "delayed",
    "completed",
    "active",
    "events",
    "pc",
]
"""The keys of bullmq's ``addPrioritizedJob`` script, in its order (bullmq's ``Scripts``)."""


@dataclass(frozen=True, slots=True)
class BullAdd:
    """One call of bullmq's ``addPrioritizedJob`` script: its keys, arguments and text."""

    keys: list[str]
    args: list[Any]
    script: str


def job_options(job_id: str, priority: int, backoff_ms: int) -> dict[str, Any]:
    """bullmq job options of an agent's job (without a delay)."""
    return {
        "jobId": job_id,
        "priority": priority_to_bullmq(priority),
        "attempts": JOB_ATTEMPTS,
        "backoff": {"type": BACKOFF_TYPE, "delay": max(backoff_ms, 1)},
        # Finished jobs are our records' business; bullmq keeps only recent ones, and the
        # failed set (the dead letters) much longer.
        "removeOnComplete": {"count": 1000},
        "removeOnFail": {"count": 100_000},
    }


class Jobs:
    """This spoke's bullmq queue, on a bullmq client of its own."""

    def __init__(self, redis: str | RedisAccess, keys: SpokeKeys) -> None:
        self.access = redis
        """The spoke's Redis access (or a bare URL): each Worker's connection uses it too."""
        self.keys = keys
        self.redis: aioredis.Redis = bullmq_client(redis)
        self.queue = Queue(QUEUE_NAME, {"connection": self.redis, "prefix": keys.prefix})
        self._add_keys: list[str] | None = None
        self._add_templates: dict[tuple[int, int], bull_args.AddTemplate | None] = {}
        """``add_call``'s templates (spoke/bull_args.py), per (priority, backoff_ms)."""
        self.handoff = StartHandoff()
        """Records this process just stored, for its own worker (spoke/start_handoff.py)."""

    async def close(self) -> None:
        await self.queue.close()
        await self.redis.aclose()

    @backend
    async def enqueue(self, rec: AgentRecord) -> None:
        """Add the agent's job (at its priority, after its not-before time). bullmq ignores
        an add whose job id exists: that is the idempotency we want here."""
        delay_ms = max(0, rec.not_before_ms - now_ms())
        opts = job_options(
            rec.job_id or SpokeKeys.job_id(rec.agent_id), rec.priority, rec.backoff_ms
        )
        if delay_ms > 0:
            opts["delay"] = delay_ms
        await self.queue.add("agent", {"agent_id": rec.agent_id}, opts)

    def add_call(self, agent_id: str, priority: int, backoff_ms: int) -> BullAdd:
        """The keys and arguments of bullmq's own ``addPrioritizedJob`` script for the job of an
        agent due now, exactly as ``Queue.add`` builds them (bullmq's ``Job`` and
        ``Scripts.addJobArgs``), for a script of ours that runs it (spoke/spawn_lua.py). Built
        from a template per (priority, backoff) that bullmq's own code made (spoke/bull_args.py;
        issue 13), or by bullmq's code itself if it has no template."""
        job_id = SpokeKeys.job_id(agent_id)
        scripts = self.queue.backend.scripts
        if self._add_keys is None:
            self._add_keys = scripts.getKeys(PRIORITIZED_KEYS)
        key = (priority, backoff_ms)
        if key not in self._add_templates:
            self._add_templates[key] = bull_args.template(
                lambda jid, ts: self._bullmq_args(jid, jid, priority, backoff_ms, ts)
            )
        made = self._add_templates[key]
        args = (
            made.args(job_id, agent_id)
            if made is not None
            else self._bullmq_args(job_id, agent_id, priority, backoff_ms)
        )
        return BullAdd(list(self._add_keys), args, scripts.commands["addPrioritizedJob"].script)

    def _bullmq_args(
        self,
        job_id: str,
        agent_id: str,
        priority: int,
        backoff_ms: int,
        timestamp: int | None = None,
    ) -> list[Any]:
        """bullmq's own arguments of ``addPrioritizedJob`` for this job (``timestamp``: its
        creation time, else now, as bullmq's ``Job`` takes it)."""
        opts = {**self.queue.jobsOpts, **job_options(job_id, priority, backoff_ms)}
        job = Job(self.queue, "agent", {"agent_id": agent_id}, opts)
        if timestamp is not None:
            job.timestamp = timestamp
        # bullmq-python passes the priority where the script's last argument is (Scripts.addJob).
        return [*self.queue.backend.scripts.addJobArgs(job), job.opts.get("priority")]

    @backend
    async def remove(self, job_id: str) -> None:
        await self.queue.remove(job_id)

    @backend
    async def waiting(self, count: int) -> list[tuple[str, str]]:
        """Up to ``count`` jobs not yet taken: (job id, agent id)."""
        jobs = await self.queue.getJobs(list(WAITING), 0, count - 1)
        return [(str(job.id), str(job.data.get("agent_id", ""))) for job in jobs]

    @backend
    async def failed(self, offset: int, count: int) -> list[str]:
        """The agent ids of the failed set (the dead letters), newest first."""
        jobs = await self.queue.getJobs(["failed"], offset, offset + count - 1)
        return [str(job.data.get("agent_id", "")) for job in jobs]

    @backend
    async def exist(self, job_ids: Iterable[str]) -> list[bool]:
        """Whether each job is stored, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(self.keys.bull(job_id))
        return [bool(n) for n in await pipe.execute()]

    @backend
    async def stats(self) -> QueueCounts:
        c: dict[str, int] = await self.queue.getJobCounts(*WAITING, "active", "completed", "failed")
        return QueueCounts(
            waiting=c.get("wait", 0) + c.get("paused", 0) + c.get("prioritized", 0),
            delayed=c.get("delayed", 0),
            active=c.get("active", 0),
            completed=c.get("completed", 0),
            failed=c.get("failed", 0),
            paused=bool(await self.queue.isPaused()),
            workers=int(await self.queue.get_workers_count()),
        )

    @backend
    async def pause(self) -> None:
        self.handoff.hold()  # a job that waits is read from Redis (spoke/start_handoff.py)
        await self.queue.pause()

    @backend
    async def resume(self) -> None:
        await self.queue.resume()
        self.handoff.release()

    def worker(self, process: Processor, settings: WorkerSettings) -> BullWorker:
        """A bullmq Worker for this queue on a connection of its own (not started: its
        owner calls ``run()``)."""
        connection = bullmq_client(self.access)
        worker = SpokeWorker(  # spoke/bull_worker.py: one fetch in flight at a time
            QUEUE_NAME,
            process,
            {
                "connection": connection,
                "prefix": self.keys.prefix,
                "concurrency": settings.concurrency,
                "autorun": False,
                "lockDuration": settings.lock_duration_ms,
                "stalledInterval": settings.stalled_interval_ms,
                # Our record decides what a recovered job means; let bullmq hand it back.
                "maxStalledCount": 10,
                "runRetryDelay": 1000,
                "settings": {"backoffStrategy": jittered_backoff},
                "name": settings.name,
            },
        )
        return BullWorker(worker, connection)
