"""Durable agent state in Redis: records, state transitions, events, and the bullmq queue.

This is the only module that changes an agent's state. Every change is one Lua script
(read, check the transition, write the record, append the event), so two processes on one
Redis can never interleave a half-done transition. The job queue itself is bullmq: BullMQ's
own scripts, so Node tooling can read a spoke's queue.

Exceptions (converted to gRPC status by spoke/service.py)::

    QueueError
    ├── AgentMissingError         no record with that id
    ├── AgentReusedError          same id, different spawn (digest differs)
    ├── TransitionError           the state does not allow the change
    ├── QueueFullError            the waiting backlog is at its cap
    ├── PageTokenError            a page token this queue did not issue
    └── BackendError              Redis is unreachable or failed
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from bullmq import Queue
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .keys import QUEUE_NAME, SpokeKeys
from .model import FINAL_STATES, AgentEvent, AgentRecord, AgentState, SpawnRequest

EVENTS_MAXLEN = 2000
"""Approximate cap on each agent's event stream (oldest trimmed first)."""

JOB_ATTEMPTS = 64
"""bullmq's own attempt cap per job. Our record decides whether an agent retries (the worker
raises UnrecoverableError on a final failure), so bullmq must never give up first."""

BACKOFF_TYPE = "jittered"
"""Our backoff strategy's name in bullmq job options (see ``jittered_backoff``)."""


class QueueError(Exception):
    """Base of the queue layer's errors."""


class AgentMissingError(QueueError):
    pass


class AgentReusedError(QueueError):
    pass


class TransitionError(QueueError):
    def __init__(self, agent_id: str, current: str) -> None:
        super().__init__(f"agent {agent_id} is {current}")
        self.current = current


class QueueFullError(QueueError):
    pass


class PageTokenError(QueueError):
    pass


class BackendError(QueueError):
    pass


P = ParamSpec("P")
T = TypeVar("T")

StateObserver = Callable[[AgentState, str], None]
"""Told of every state change this process makes: (new state, reason code)."""


def _unobserved(state: AgentState, reason: str) -> None:
    pass


def _backend(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis failures into BackendError at the queue layer's edge."""

    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BackendError(f"redis unavailable: {type(exc).__name__}") from exc
        except RedisError as exc:
            raise BackendError(f"redis error: {exc}") from exc

    return wrapped


_CREATE = """
-- KEYS: agent, index, events, then bullmq's wait, paused, prioritized, delayed.
-- ARGV: agent_id, digest, now_ms, maxlen, max_backlog, field, value, ...
local existing = redis.call('HGET', KEYS[1], 'digest')
if existing then
  return {'exists', existing}
end
local backlog = redis.call('LLEN', KEYS[4]) + redis.call('LLEN', KEYS[5])
  + redis.call('ZCARD', KEYS[6]) + redis.call('ZCARD', KEYS[7])
if backlog >= tonumber(ARGV[5]) then
  return {'full', tostring(backlog)}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'state', 'QUEUED', 'seq', 1, 'digest', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '1-0',
  'kind', 'state', 'state', 'QUEUED', 'reason', '', 'time', ARGV[3])
return {'created', ARGV[2]}
"""

_TRANSITION = """
-- KEYS: agent, events.
-- ARGV: from_csv, to, reason, now_ms, maxlen, owner_worker, owner_attempt, field, value, ...
-- With an owner, the record must still be held by that worker on that attempt: a worker
-- that was paused past its lease must not overwrite the attempt that replaced it.
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
if not ok then return {'illegal', cur} end
if ARGV[6] ~= '' then
  local held = redis.call('HMGET', KEYS[1], 'worker', 'attempt')
  if held[1] ~= ARGV[6] or held[2] ~= ARGV[7] then return {'illegal', cur .. ' (superseded)'} end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3])
if #ARGV > 7 then redis.call('HSET', KEYS[1], unpack(ARGV, 8)) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0',
  'kind', 'state', 'state', ARGV[2], 'reason', ARGV[3], 'time', ARGV[4])
return {'ok', tostring(seq)}
"""

_EVENT = """
-- KEYS: agent, events. ARGV: kind, data, now_ms, maxlen, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0',
  'kind', ARGV[1], 'data', ARGV[2], 'time', ARGV[3])
return seq
"""

_SLOT = """
-- KEYS: slots zset. ARGV: agent_id, limit, now_ms, lease_ms
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
  return 1
end
return 0
"""

_REQUEST_KILL = """
-- KEYS: agent, events. ARGV: kill_command_id, now_ms, maxlen
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
if cur == 'QUEUED' or cur == 'RETRYING' then
  redis.call('HSET', KEYS[1], 'state', 'KILLED', 'reason', 'KILL_REQUESTED',
    'end_ms', ARGV[2], 'kill_requested', ARGV[1])
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0',
    'kind', 'state', 'state', 'KILLED', 'reason', 'KILL_REQUESTED', 'time', ARGV[2])
  return {'killed', cur}
end
if cur == 'STARTING' or cur == 'RUNNING' then
  redis.call('HSET', KEYS[1], 'kill_requested', ARGV[1])
  return {'signal', cur}
end
if redis.call('HGET', KEYS[1], 'kill_requested') == ARGV[1] then return {'repeat', cur} end
return {'final', cur}
"""


@dataclass(frozen=True, slots=True)
class KillOutcome:
    """What a kill request did: ``killed`` (it was waiting), ``signal`` (a worker must stop
    it), ``repeat`` (this same kill already finished it)."""

    action: str
    previous: str


REPLAYABLE = (AgentState.FAILED, AgentState.TIMED_OUT, AgentState.DEAD_LETTERED)


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
class Page:
    agents: list[AgentRecord]
    next_token: str


def priority_to_bullmq(priority: int) -> int:
    """Ours: 10 most urgent. bullmq: 1 runs first, and unprioritised jobs jump the queue,
    so every job gets an explicit priority (PITFALLS)."""
    return 11 - priority


def _pairs(fields: Mapping[str, object]) -> list[object]:
    """Like ``_flatten`` but keeps bytes values as bytes (binary-safe Lua arguments)."""
    out: list[object] = []
    for k, v in fields.items():
        out += [k, v]
    return out


def _flatten(fields: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out += [k, "" if v is None else str(v)]
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


class AgentQueue:
    """The spoke's durable state. Create inside the running loop; close with ``close()``."""

    def __init__(
        self,
        redis_url: str,
        spoke: str,
        *,
        op_timeout_s: float = 5.0,
        observe: StateObserver | None = None,
    ) -> None:
        self.keys = SpokeKeys(spoke)
        self._observe: StateObserver = observe or _unobserved
        self.redis_url = redis_url
        # Our own calls are short: bound them. bullmq's blocking calls get their own client.
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=op_timeout_s,
            socket_connect_timeout=op_timeout_s,
            **_reconnecting(),
        )
        self.bull_redis: aioredis.Redis = bullmq_client(redis_url)
        self.jobs = Queue(QUEUE_NAME, {"connection": self.bull_redis, "prefix": self.keys.prefix})
        self._create = self.redis.register_script(_CREATE)
        self._transition = self.redis.register_script(_TRANSITION)
        self._event = self.redis.register_script(_EVENT)
        self._kill = self.redis.register_script(_REQUEST_KILL)
        self._slot = self.redis.register_script(_SLOT)

    async def close(self) -> None:
        await self.jobs.close()
        await self.bull_redis.aclose()
        await self.redis.aclose()

    # --- spawn ---------------------------------------------------------------

    @_backend
    async def create(self, req: SpawnRequest, max_backlog: int) -> tuple[AgentRecord, bool]:
        """Store a spawn and queue it; idempotent on the agent id.

        Returns the record and whether this call created it. One script checks the id, the
        backlog cap, and writes the record with the audit copies of the signed envelopes,
        its index entry and its first event; the bullmq job is added after it: a crash
        between the two leaves a QUEUED record that ``requeue_orphans`` (and any retry of
        the same spawn) puts back on the queue. Callers shield this from cancellation, so
        a client that gives up mid-call cannot tear it. Two round trips in all.
        """
        now = now_ms()
        rec = AgentRecord(
            agent_id=req.agent_id,
            state=AgentState.QUEUED,
            profile=req.profile,
            task=req.task,
            issuer=req.issuer,
            priority=req.priority,
            digest=req.digest,
            create_ms=now,
            timeout_ms=req.timeout_ms,
            max_attempts=req.max_attempts,
            expire_ms=req.expire_ms,
            labels=dict(req.labels),
            backoff_ms=req.backoff_ms,
            job_id=SpokeKeys.job_id(req.agent_id),
            not_before_ms=now + req.delay_ms,
            seq=1,
        )
        fields = {
            "agent_id": rec.agent_id,
            "profile": rec.profile,
            "task": rec.task,
            "issuer": rec.issuer,
            "priority": rec.priority,
            "create_ms": now,
            "timeout_ms": rec.timeout_ms,
            "max_attempts": rec.max_attempts,
            "attempt": 0,
            "expire_ms": rec.expire_ms,
            "labels": json.dumps(dict(rec.labels), sort_keys=True),
            "progress_percent": -1,
            "backoff_ms": rec.backoff_ms,
            "job_id": rec.job_id,
            "not_before_ms": rec.not_before_ms,
        }
        audit: dict[str, object] = {"envelope": req.envelope, "relay": req.relay}
        args: list[Any] = [
            req.agent_id,
            req.digest,
            now,
            EVENTS_MAXLEN,
            max_backlog,
            *_flatten(fields),
            *_pairs(audit),
        ]
        keys = [
            self.keys.agent(req.agent_id),
            self.keys.agent_index,
            self.keys.events(req.agent_id),
            *(self.keys.bull(kind) for kind in ("wait", "paused", "prioritized", "delayed")),
        ]
        status, detail = await self._create(keys=keys, args=args)
        if status == b"exists":
            return await self._existing(req, await self.get(req.agent_id)), False
        if status == b"full":
            raise QueueFullError(f"queue holds {detail.decode()} waiting agents, its limit")
        self._observe(AgentState.QUEUED, "")
        await self._enqueue(rec)
        return rec, True

    async def _existing(self, req: SpawnRequest, rec: AgentRecord) -> AgentRecord:
        if rec.digest != req.digest:
            raise AgentReusedError(f"agent id {req.agent_id} was used for a different spawn")
        if rec.state is AgentState.QUEUED:
            await self._enqueue(rec)  # heals a crash between the record and the job
        return rec

    async def _enqueue(self, rec: AgentRecord) -> None:
        delay_ms = max(0, rec.not_before_ms - now_ms())
        opts: dict[str, Any] = {
            "jobId": rec.job_id or SpokeKeys.job_id(rec.agent_id),
            "priority": priority_to_bullmq(rec.priority),
            "attempts": JOB_ATTEMPTS,
            "backoff": {"type": BACKOFF_TYPE, "delay": max(rec.backoff_ms, 1)},
            # Finished jobs are our records' business; bullmq keeps only recent ones, and the
            # failed set (the dead letters) much longer.
            "removeOnComplete": {"count": 1000},
            "removeOnFail": {"count": 100_000},
        }
        if delay_ms > 0:
            opts["delay"] = delay_ms
        # bullmq ignores an add whose jobId exists: that is the idempotency we want here.
        await self.jobs.add("agent", {"agent_id": rec.agent_id}, opts)

    # --- reads -------------------------------------------------------------

    @_backend
    async def get_or_none(self, agent_id: str) -> AgentRecord | None:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.agent(agent_id))  # type: ignore[assignment]  # bytes: decode_responses is off
        if not raw or b"state" not in raw:
            return None
        return AgentRecord.from_hash(raw)

    async def get(self, agent_id: str) -> AgentRecord:
        rec = await self.get_or_none(agent_id)
        if rec is None:
            raise AgentMissingError(f"agent {agent_id} not found")
        return rec

    @_backend
    async def list_page(
        self, page_size: int, token: str, states: Iterable[AgentState] = ()
    ) -> Page:
        """Newest first. The token is an opaque offset into the time index."""
        offset = _decode_token(token)
        wanted = set(states)
        ids: list[bytes] = await self.redis.zrevrange(  # type: ignore[assignment]  # bytes: decode_responses is off
            self.keys.agent_index, offset, offset + page_size - 1
        )
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.agent(i.decode()))
        rows = await pipe.execute()
        agents = [AgentRecord.from_hash(r) for r in rows if r and b"state" in r]
        if wanted:
            agents = [a for a in agents if a.state in wanted]
        nxt = _encode_token(offset + page_size) if len(ids) == page_size else ""
        return Page(agents=agents, next_token=nxt)

    @_backend
    async def events(
        self, agent_id: str, after_seq: int, count: int = 500, block_ms: int = 0
    ) -> list[AgentEvent]:
        """Events after ``after_seq``; with ``block_ms``, wait that long for a first one."""
        key = self.keys.events(agent_id)
        rows: list[tuple[bytes, dict[bytes, bytes]]]
        if block_ms:
            got: Any = await self.redis.xread({key: f"{after_seq}-0"}, count=count, block=block_ms)
            rows = got[0][1] if got else []
        else:
            rows = await self.redis.xrange(  # type: ignore[assignment]  # bytes: decode_responses is off
                key, min=f"({after_seq}-0", max="+", count=count
            )
        out: list[AgentEvent] = []
        for entry_id, data in rows:
            fields = {k.decode(): v.decode("utf-8", "replace") for k, v in data.items()}
            out.append(
                AgentEvent(
                    seq=int(entry_id.decode().split("-")[0]),
                    kind=fields.get("kind", ""),
                    time_ms=int(fields.get("time", "0")),
                    state=fields.get("state", ""),
                    reason=fields.get("reason", ""),
                    data=fields.get("data", ""),
                )
            )
        return out

    # --- state changes -----------------------------------------------------

    @_backend
    async def transition(
        self,
        agent_id: str,
        allowed_from: Iterable[AgentState],
        to: AgentState,
        reason: str = "",
        fields: Mapping[str, object] | None = None,
        owner: tuple[str, int] | None = None,
    ) -> int:
        """Move an agent to ``to`` if it is in one of ``allowed_from`` (and, with ``owner``,
        still held by that (worker, attempt)); return the event seq."""
        now = now_ms()
        extra = dict(fields or {})
        if to in FINAL_STATES:
            extra.setdefault("end_ms", now)
        worker, attempt = owner if owner is not None else ("", "")
        args: list[Any] = [
            ",".join(allowed_from),
            to.value,
            reason,
            now,
            EVENTS_MAXLEN,
            worker,
            attempt,
            *_flatten(extra),
        ]
        keys = [self.keys.agent(agent_id), self.keys.events(agent_id)]
        status, detail = await self._transition(keys=keys, args=args)
        if status == b"missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if status == b"illegal":
            raise TransitionError(agent_id, detail.decode())
        self._observe(to, reason)
        return int(detail)

    @_backend
    async def record_event(
        self, agent_id: str, kind: str, data: str, fields: Mapping[str, object] | None = None
    ) -> None:
        """Append a progress/output event and update non-state fields (tails, progress)."""
        args: list[Any] = [kind, data, now_ms(), EVENTS_MAXLEN, *_flatten(dict(fields or {}))]
        await self._event(keys=[self.keys.agent(agent_id), self.keys.events(agent_id)], args=args)

    @_backend
    async def request_kill(self, agent_id: str, kill_command_id: str) -> KillOutcome:
        keys = [self.keys.agent(agent_id), self.keys.events(agent_id)]
        action, prev = await self._kill(keys=keys, args=[kill_command_id, now_ms(), EVENTS_MAXLEN])
        if action == b"missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if action == b"final":
            raise TransitionError(agent_id, prev.decode())
        outcome = KillOutcome(action.decode(), prev.decode())
        if outcome.action == "killed":
            self._observe(AgentState.KILLED, "KILL_REQUESTED")
            rec = await self.get(agent_id)
            await self.jobs.remove(rec.job_id)  # best effort: a worker skips it anyway
        else:
            await self.redis.publish(self.keys.kill_channel, agent_id)
        return outcome

    @_backend
    async def kill_requested(self, agent_id: str) -> bool:
        return bool(await self.redis.hget(self.keys.agent(agent_id), "kill_requested"))

    @asynccontextmanager
    async def kill_requests(self) -> AsyncIterator[aioredis.client.PubSub]:
        """Subscribe to kill requests for this spoke (every worker process listens)."""
        pubsub = self.bull_redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.kill_channel)
            yield pubsub
        finally:
            # Redis may be gone: unsubscribing can fail, closing must still happen.
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    @_backend
    async def replay(self, agent_id: str, command_id: str) -> AgentRecord:
        """Run a failed agent again with fresh attempts, as a new job (the old one leaves the
        dead-letter set). Idempotent on the replay's command id: a retried replay returns
        the agent instead of failing on its new state."""
        rec = await self.get(agent_id)
        if rec.replay_command == command_id:
            return rec
        replays = rec.replays + 1
        new_job = f"{SpokeKeys.job_id(agent_id)}-r{replays}"
        await self.transition(
            agent_id,
            REPLAYABLE,
            AgentState.QUEUED,
            "REPLAYED",
            {
                "attempt": 0,
                "replays": replays,
                "replay_command": command_id,
                "job_id": new_job,
                "exit_code": "",
                "end_ms": "",
                "start_ms": "",
                "kill_requested": "",
                "pid": "",
                "pgid": "",
                "start_ticks": "",
                "expire_ms": 0,
            },
        )
        if rec.job_id:
            await self.jobs.remove(rec.job_id)
        again = await self.get(agent_id)
        await self._enqueue(again)
        return again

    @_backend
    async def dead_letters(self, page_size: int, token: str) -> Page:
        """The bullmq failed set, newest first, as agent records."""
        offset = _decode_token(token)
        jobs = await self.jobs.getJobs(["failed"], offset, offset + page_size - 1)
        agents: list[AgentRecord] = []
        for job in jobs:
            rec = await self.get_or_none(str(job.data.get("agent_id", "")))
            if rec is not None:
                agents.append(rec)
        nxt = _encode_token(offset + page_size) if len(jobs) == page_size else ""
        return Page(agents=agents, next_token=nxt)

    @_backend
    async def stats(self) -> QueueCounts:
        c: dict[str, int] = await self.jobs.getJobCounts(
            "wait", "paused", "prioritized", "delayed", "active", "completed", "failed"
        )
        return QueueCounts(
            waiting=c.get("wait", 0) + c.get("paused", 0) + c.get("prioritized", 0),
            delayed=c.get("delayed", 0),
            active=c.get("active", 0),
            completed=c.get("completed", 0),
            failed=c.get("failed", 0),
            paused=bool(await self.jobs.isPaused()),
            workers=int(await self.jobs.get_workers_count()),
        )

    @_backend
    async def pause(self) -> None:
        await self.jobs.pause()

    @_backend
    async def resume(self) -> None:
        await self.jobs.resume()

    @_backend
    async def drain(self) -> int:
        """Cancel every waiting agent (KILLED, reason DRAINED) and remove its job."""
        drained = 0
        while True:
            jobs = await self.jobs.getJobs(["wait", "paused", "prioritized", "delayed"], 0, 499)
            if not jobs:
                return drained
            for job in jobs:
                agent_id = str(job.data.get("agent_id", ""))
                try:
                    await self.transition(
                        agent_id,
                        [AgentState.QUEUED, AgentState.RETRYING],
                        AgentState.KILLED,
                        "DRAINED",
                    )
                    drained += 1
                except (TransitionError, AgentMissingError):
                    pass  # already started or gone: not ours to cancel
                await self.jobs.remove(job.id)

    @_backend
    async def acquire_slot(self, profile: str, agent_id: str, limit: int, lease_ms: int) -> bool:
        """Take one of ``limit`` run slots of a profile, shared by every spoked on this Redis.
        A slot is a lease: a crashed worker's slot frees itself when the lease runs out."""
        got = await self._slot(
            keys=[self.keys.profile_slots(profile)], args=[agent_id, limit, now_ms(), lease_ms]
        )
        return bool(got)

    @_backend
    async def release_slot(self, profile: str, agent_id: str) -> None:
        await self.redis.zrem(self.keys.profile_slots(profile), agent_id)

    @_backend
    async def sweep(self, retention_ms: int, batch: int = 500) -> int:
        """Forget finished agents older than the retention: record, events, index entry."""
        cutoff = now_ms() - retention_ms
        ids: list[bytes] = await self.redis.zrangebyscore(  # type: ignore[assignment]  # bytes
            self.keys.agent_index, "-inf", cutoff, start=0, num=batch
        )
        swept = 0
        for raw in ids:
            agent_id = raw.decode()
            rec = await self.get_or_none(agent_id)
            if rec is not None and not (rec.state.final and (rec.end_ms or 0) < cutoff):
                continue
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self.keys.agent(agent_id), self.keys.events(agent_id))
            pipe.zrem(self.keys.agent_index, agent_id)
            await pipe.execute()
            swept += 1
        return swept

    @_backend
    async def held_agents(self) -> list[AgentRecord]:
        """Every agent a worker holds (STARTING or RUNNING)."""
        held: list[AgentRecord] = []
        async for rows in self._scan_index("state"):
            for agent_id, (state,) in rows:
                if state in (b"STARTING", b"RUNNING"):
                    rec = await self.get_or_none(agent_id)
                    if rec is not None:
                        held.append(rec)
        return held

    @_backend
    async def requeue_orphans(self) -> int:
        """Put QUEUED records with no bullmq job back on the queue (crash between writes)."""
        healed = 0
        async for rows in self._scan_index("state", "job_id"):
            queued = [
                (agent_id, (job or b"").decode())
                for agent_id, (state, job) in rows
                if state == b"QUEUED"
            ]
            if not queued:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for agent_id, job in queued:
                pipe.exists(self.keys.bull(job or SpokeKeys.job_id(agent_id)))
            present = await pipe.execute()
            for (agent_id, _), there in zip(queued, present, strict=True):
                if not there:
                    await self._enqueue(await self.get(agent_id))
                    healed += 1
        return healed

    async def _scan_index(
        self, *fields: str, batch: int = 500
    ) -> AsyncIterator[list[tuple[str, list[bytes | None]]]]:
        """Every agent in the index with some of its record's fields, in pipelined batches:
        a large backlog costs two round trips per ``batch`` agents."""
        offset = 0
        while True:
            ids: list[bytes] = await self.redis.zrange(  # type: ignore[assignment]  # bytes
                self.keys.agent_index, offset, offset + batch - 1
            )
            if not ids:
                return
            offset += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hmget(self.keys.agent(raw.decode()), *fields)
            rows = await pipe.execute()
            yield [(raw.decode(), row) for raw, row in zip(ids, rows, strict=True)]

    @_backend
    async def maxmemory_policy(self) -> str:
        conf: dict[Any, Any] = await self.redis.config_get("maxmemory-policy")
        value = conf.get(b"maxmemory-policy") or conf.get("maxmemory-policy") or b""
        return value.decode() if isinstance(value, bytes) else str(value)


def bullmq_client(redis_url: str) -> aioredis.Redis:
    """A client for bullmq: no socket timeout, since its blocking calls wait long (PITFALLS),
    and decoded responses, which bullmq's job parsing assumes (bytes give empty job data)."""
    return aioredis.Redis.from_url(
        redis_url,
        socket_timeout=None,
        socket_connect_timeout=5,
        decode_responses=True,
        **_reconnecting(),
    )


def _reconnecting() -> dict[str, Any]:
    """After a Redis restart every pooled connection is dead: retry a command that failed
    on one (three times, backing off), and check a connection idle for 5 s before use.
    A retried script is safe: each checks state first (a create finds its record, a
    transition that already happened is refused and its caller knows what that means)."""
    return {
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 5,
    }


def jittered_backoff(attempts_made: int, _type: str, _err: object, job: Any) -> int:
    """bullmq backoff strategy: exponential from the job's base delay, with equal jitter
    (between half and all of the exponential step), capped at BACKOFF_CAP_MS."""
    base = int((job.opts.get("backoff") or {}).get("delay", 1000))
    step = min(base * 2 ** max(attempts_made - 1, 0), BACKOFF_CAP_MS)
    return int(step / 2 + random.random() * step / 2)  # noqa: S311 - jitter, not a secret


BACKOFF_CAP_MS = 5 * 60 * 1000
MAX_PAGE_OFFSET = 2**40
"""Page offsets beyond this are refused (Redis takes signed 64-bit ranges)."""


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        offset = int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PageTokenError("page_token is not valid") from exc
    if kind != "o" or not 0 <= offset <= MAX_PAGE_OFFSET:
        raise PageTokenError("page_token is not valid")
    return offset
