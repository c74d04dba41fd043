"""Agent records: the state machine, its event streams, and reading them (the Lua scripts that
change a record: :mod:`hubspoke.spoke.records_lua`).

This is the only module that changes an agent's state (kills while queued aside, which
spoke/kills.py does in one script of the same shape). Every change is one Lua script (read,
check the transition, write the record, append the event), so two processes on one Redis
can never interleave a half-done transition. ``wait_final`` and ``follow`` read an agent's
event stream for the service: until it is final, and live with heartbeats.
"""

from __future__ import annotations

import json
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from typing import Any

import redis.asyncio as aioredis

from hubspoke.admission import ADMIT_SCRIPT
from hubspoke.redis_mux import RedisMux, ScriptRef

from . import dedupe, held_scan, spawn_lua, timings
from . import records_lua as lua
from .backend import (
    AgentMissingError,
    AgentReusedError,
    QueueError,
    QueueFullError,
    QuotaError,
    TransitionError,
    backend,
    now_ms,
)
from .fanout import StreamFanout
from .jobs import BullAdd
from .keys import SpokeKeys
from .list_read import IndexRun
from .model import EDGES, FINAL_STATES, AgentEvent, AgentRecord, AgentState, SpawnRequest
from .pages import Page, collect_scanned

EVENTS_MAXLEN = 2000
"""Approximate cap on each agent's event stream (oldest trimmed first)."""

FOLLOW_IDLE_S = 1.0
"""How long a follower waits for a live event before it looks at the record again."""

WAIT_RECHECK_S = 0.5
"""How often ``wait_final`` reads the record while no event comes."""

CATCH_UP_COUNT = 500
"""Stored events one catch-up read of a follower takes."""


class UnknownItemError(QueueError):
    """A verdict names a verification item the agent does not wait on."""


AsyncScript = Callable[[list[str], list[Any]], Awaitable[Any]]

StateObserver = Callable[[AgentState, str], None]
"""Told of every state change this process makes: (new state, reason code)."""


def _unobserved(state: AgentState, reason: str) -> None:
    pass


def pairs(fields: Mapping[str, object]) -> list[object]:
    """Like ``flatten`` but keeps bytes values as bytes (binary-safe Lua arguments)."""
    out: list[object] = []
    for k, v in fields.items():
        out += [k, v]
    return out


def flatten(fields: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out += [k, "" if v is None else str(v)]
    return out


def parse_events(rows: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> list[AgentEvent]:
    """Stream entries (id ``seq-0``, fields) as events."""
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
                sender=fields.get("sender", ""),
                input_seq=int(fields.get("input_seq") or 0),
                approver=fields.get("approver", ""),  # approvals
            )
        )
    return out


class Records:
    """Agent records and event streams on one command client (see spoke/backend.py)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: SpokeKeys,
        fanout: StreamFanout,
        observe: StateObserver | None = None,
        *,
        mux: RedisMux | None = None,
    ) -> None:
        self.redis = redis
        self.mux = mux
        """The one-round-trip spawn script's pipelined connection (shared/redis_mux.py)."""
        self.keys = keys
        self.fanout = fanout
        self.observe: StateObserver = observe or _unobserved
        self.timed: timings.TimingSink | None = None
        """Told how long agents waited and ran (spoke/timings.py), when set."""
        self._create = redis.register_script(lua.with_feed(lua.CREATE))
        self._transition = redis.register_script(lua.with_feed(lua.TRANSITION))
        self._event = redis.register_script(lua.EVENT)
        self._count_waiting = redis.register_script(lua.COUNT_WAITING)
        self._settle = redis.register_script(lua.with_feed(lua.SETTLE))
        self._joined: dict[str, tuple[str, Any, ScriptRef]] = {}
        """spawn_lua's joined scripts by kind: (bullmq's text, script, its reference)."""
        self._index_run = IndexRun(redis, keys, mux)  # list pages: one round trip (issue 13)

    # --- spawn ---------------------------------------------------------------

    @backend
    async def insert(
        self,
        req: SpawnRequest,
        max_backlog: int,
        max_per_principal: int = 0,
        add: BullAdd | None = None,
        admit: tuple[list[str], list[Any]] | None = None,
    ) -> tuple[AgentRecord, bool]:
        """Store a spawn's record, idempotent on the agent id: the record, and whether this
        call created it. One script checks the id, the issuer's quota of waiting agents
        (``max_per_principal``; 0: none) and the backlog cap, and only then writes the record
        with the audit copies of the signed envelopes, its index and waiting entries and its
        first event. The caller queues its job (spoke/queue.py), unless it passes ``add``:
        then bullmq's add script for the job runs in the same script, only if the record is
        created (spoke/spawn_lua.py), and the spawn is one round trip. With ``admit`` too (the
        command's admission: ``Admission.call``; no dedupe key), the admission script runs
        first in that same script, and the rest only if it admits.

        Raises:
            spawn_lua.AdmissionRefusedError: ``admit`` refused; nothing was written."""
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
            not_before_ms=(req.accept_ms or now) + req.delay_ms,  # delay counts from acceptance
            seq=1,
            start_deadline_ms=req.expire_ms if req.accept_ms else 0,
            approvals_required=req.approvals_required,
            approvers=req.approvers,
            approval_deadline_ms=req.approval_deadline_ms,
            dedupe_key=req.dedupe_key,
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
            "start_deadline_ms": rec.start_deadline_ms,
        }
        if req.approvals_required:  # approvals: queue.create holds it (spoke/approvals.py)
            fields["approvals_required"] = req.approvals_required
            fields["approvers"] = json.dumps(list(req.approvers))
            fields["approval_deadline_ms"] = req.approval_deadline_ms
        if req.dedupe_key:
            fields["dedupe_key"] = req.dedupe_key
        audit: dict[str, object] = {"envelope": req.envelope, "relay": req.relay}
        args: list[Any] = [
            req.agent_id,
            req.digest,
            now,
            EVENTS_MAXLEN,
            max_backlog,
            req.issuer,
            max(max_per_principal, 0),
            *flatten(fields),
            *pairs(audit),
        ]
        keys = [
            self.keys.agent(req.agent_id),
            self.keys.agent_index,
            self.keys.events(req.agent_id),
            *(self.keys.bull(kind) for kind in ("wait", "paused", "prioritized", "delayed")),
            self.keys.waiting,
        ]
        for _ in range(dedupe.STALE_RETRIES):
            claim = await dedupe.claim_keys(self.redis, self.keys, req.issuer, req.dedupe_key)
            if admit is not None and add is not None and not claim:
                status, detail, *rest = await self._admit_create_and_add(add)(
                    *spawn_lua.admit_call_args(admit, keys, args, add.keys, add.args)
                )
                if status == b"refused":
                    raise spawn_lua.AdmissionRefusedError(int(detail), rest[0])
                break  # admitted once: never again (no dedupe claim, so never stale)
            if admit is not None:
                raise ValueError("an admission rides only on a spawn due now without a dedupe key")
            if add is None:
                status, detail = await self._create(keys=keys + claim, args=args)
            else:
                status, detail, *_ = await self._create_and_add(add)(
                    *spawn_lua.call_args(keys + claim, args, add.keys, add.args)
                )
            if status != b"stale":
                break
        if status == b"dedupe":
            raise dedupe.DeduplicatedError(detail.decode())
        if status == b"stale":
            raise dedupe.ContendedError(req.dedupe_key)
        if status == b"exists":
            existing = await self.get(req.agent_id)
            if existing.digest != req.digest:
                raise AgentReusedError(f"agent id {req.agent_id} was used for a different spawn")
            return existing, False
        if status == b"quota":
            raise QuotaError(
                f"{req.issuer} has {detail.decode()} agents waiting on this spoke, its limit",
                limit=max_per_principal,
            )
        if status == b"full":
            raise QueueFullError(f"queue holds {detail.decode()} waiting agents, its limit")
        self.observe(AgentState.QUEUED, "")
        return rec, True

    def _create_and_add(self, add: BullAdd) -> AsyncScript:
        """The create script joined with bullmq's add script (one per bullmq text, so once)."""
        return self._joined_call(
            "create", add, lambda: spawn_lua.create_and_add(lua.with_feed(lua.CREATE), add.script)
        )

    def _admit_create_and_add(self, add: BullAdd) -> AsyncScript:
        """The admission script, then the create script and bullmq's add (issue 13)."""
        return self._joined_call(
            "admit",
            add,
            lambda: spawn_lua.admit_create_and_add(
                ADMIT_SCRIPT, lua.with_feed(lua.CREATE), add.script
            ),
        )

    def _joined_call(self, kind: str, add: BullAdd, text: Callable[[], str]) -> AsyncScript:
        joined = self._joined.get(kind)
        if joined is None or joined[0] != add.script:
            script = self.redis.register_script(text())
            joined = self._joined[kind] = (add.script, script, ScriptRef.of(script))
        _, script, ref = joined
        mux = self.mux
        if mux is not None:  # one EVALSHA on the pipelined connection (issue 13)

            async def on_mux(keys: list[str], args: list[Any]) -> Any:
                return (await mux.checked_script(ref, keys, args))[0]

            return on_mux

        async def call(keys: list[str], args: list[Any]) -> Any:
            return await script(keys=keys, args=args)

        return call

    # --- reads -------------------------------------------------------------

    @backend
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

    @backend
    async def get_many(self, agent_ids: Iterable[str]) -> list[AgentRecord]:
        """The records of these ids that exist, in order, in one round trip."""
        return [rec for rec in await self.get_aligned(agent_ids) if rec is not None]

    @backend
    async def get_aligned(self, agent_ids: Iterable[str]) -> list[AgentRecord | None]:
        """The record of each id, or None where it does not exist, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            pipe.hgetall(self.keys.agent(agent_id))
        rows = await pipe.execute()
        return [AgentRecord.from_hash(r) if r and b"state" in r else None for r in rows]

    @backend
    async def list_page(
        self,
        page_size: int,
        token: str,
        states: Iterable[AgentState] = (),
        owner: str | None = None,
        match: Callable[[AgentRecord], bool] | None = None,
    ) -> Page:
        """Newest first. The token is an opaque offset into the time index. With ``states``,
        ``owner`` (an issuer) or ``match`` (spoke/list_filter.py), only matching agents, pages
        filled as spoke/pages.py says."""
        wanted = set(states)

        def keep(rec: AgentRecord) -> bool:
            return (
                (not wanted or rec.state in wanted)
                and (owner is None or rec.issuer == owner)
                and (match is None or match(rec))
            )

        filtered = bool(wanted) or owner is not None or match is not None
        return await collect_scanned(self._index_run, token, page_size, keep if filtered else None)

    @backend
    async def events(self, agent_id: str, after_seq: int, count: int = 500) -> list[AgentEvent]:
        """Stored events after ``after_seq`` (at most ``count``). Never blocks: live events
        come through the watch reader (``follow``, ``wait_final``)."""
        rows: list[tuple[bytes, dict[bytes, bytes]]] = await self.redis.xrange(  # type: ignore[assignment]  # bytes: decode_responses is off
            self.keys.events(agent_id), min=f"({after_seq}-0", max="+", count=count
        )
        events = parse_events(rows)
        if after_seq < 1 and (not events or events[0].seq == 2):
            first = await self.first_event(agent_id)
            events = [first, *events[: count - 1]] if first else events
        return events

    async def first_event(self, agent_id: str) -> AgentEvent | None:
        """Event 1 (QUEUED at create time), which the create script does not store: an agent's
        event stream is created by its second event, so a queued agent costs no stream (issue
        13, memory per queued agent). None when the record is gone."""
        created: bytes | None = await self.redis.hget(self.keys.agent(agent_id), "create_ms")  # type: ignore[assignment]  # bytes: decode_responses is off
        if created is None:
            return None
        return AgentEvent(seq=1, kind="state", time_ms=int(created), state="QUEUED")

    async def wait_final(self, agent_id: str, timeout_s: float) -> AgentRecord:
        """The agent's record once it is final, or as it is when ``timeout_s`` runs out.
        Follows its event stream through the process's watch reader, so it answers as soon
        as the final event is written and holds no Redis connection while it waits."""
        rec = await self.get(agent_id)
        if rec.state.final or timeout_s <= 0:
            return rec
        deadline = time.monotonic() + timeout_s
        async with self.fanout.subscribe(self.keys.events(agent_id), rec.seq) as sub:
            rec = await self.get(agent_id)  # subscribed: no event after this read is missed
            while not rec.state.final:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await sub.next(min(left, WAIT_RECHECK_S))
                sub.take_overflow()
                rec = await self.get(agent_id)
        return rec

    async def follow(
        self, agent_id: str, after: int, heartbeat_s: float
    ) -> AsyncGenerator[AgentEvent, None]:
        """Stored events after ``after``, then live ones, with a ``heartbeat`` event every
        ``heartbeat_s`` of silence, until the agent is final and its last event is out.

        Live events come from the process's watch reader (spoke/fanout.py), so a follower
        holds no Redis connection while it waits; stored ones, and any a slow follower's
        buffer dropped, are read here with short XRANGE calls."""
        beat = time.monotonic()
        async with self.fanout.subscribe(self.keys.events(agent_id), after) as sub:
            catch_up = True  # first the events stored before the subscription
            while True:
                if sub.take_overflow() or catch_up:
                    batch = await self.events(agent_id, after, count=CATCH_UP_COUNT)
                    catch_up = len(batch) == CATCH_UP_COUNT  # a full page: read on
                else:
                    batch = parse_events(await sub.next(FOLLOW_IDLE_S))
                fresh = [event for event in batch if event.seq > after]
                for event in fresh:
                    after = event.seq
                    yield event
                if fresh:
                    beat = time.monotonic()
                if batch or catch_up or sub.overflowed:
                    continue
                rec = await self.get(agent_id)
                if rec.state.final and rec.seq <= after:
                    return
                if time.monotonic() - beat >= heartbeat_s:
                    beat = time.monotonic()
                    yield AgentEvent(seq=after, kind="heartbeat", time_ms=int(time.time() * 1000))

    @backend
    async def waiting_of(self, principal: str) -> int:
        """How many of ``principal``'s agents wait (QUEUED or RETRYING): what its quota counts."""
        lo, hi = SpokeKeys.waiting_range(principal)
        return int(await self.redis.zlexcount(self.keys.waiting, lo, hi))

    @backend
    async def count_waiting(self, agent_ids: Iterable[str]) -> int:
        """Put these agents in the waiting set if they wait (idempotent); how many were not
        counted before. For agents stored before the quota existed (the one-time start-up
        scan, spoke/start_up_scan.py): one pipelined round trip for them all."""
        pipe = self.redis.pipeline(transaction=False)
        for agent_id in agent_ids:
            await self._count_waiting(
                keys=[self.keys.agent(agent_id), self.keys.waiting], client=pipe
            )
        return sum(int(n) for n in await pipe.execute())

    @backend
    async def signed_copies(self, agent_id: str) -> tuple[bytes, bytes]:
        """The client's signed envelope and the hub's relay (empty if none) stored with the
        record as received: what the worker verifies again before each start (their own key,
        keys.py ``signed``; in the record's hash for agents stored before it)."""
        raw: bytes | None = await self.redis.get(self.keys.signed(agent_id))  # type: ignore[assignment]  # bytes: decode_responses is off
        if raw is not None:
            length, _, both = raw.partition(b":")
            return both[: int(length)], both[int(length) :]
        row: list[bytes | None] = await self.redis.hmget(  # type: ignore[assignment]  # bytes: decode_responses is off
            self.keys.agent(agent_id), "envelope", "relay"
        )
        return row[0] or b"", row[1] or b""

    @backend
    async def kill_requested(self, agent_id: str) -> bool:
        return bool(await self.redis.hget(self.keys.agent(agent_id), "kill_requested"))

    # --- state changes -----------------------------------------------------

    @backend
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
        still held by that (worker, attempt)); return the event seq. Only the edges of
        ``model.EDGES`` may be asked for (a programming error otherwise)."""
        illegal = [s for s in allowed_from if s not in EDGES[to]]
        if illegal:
            raise ValueError(f"no edge {','.join(illegal)} -> {to.value}")
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
            *flatten(extra),
        ]
        keys = [
            self.keys.agent(agent_id),
            self.keys.events(agent_id),
            self.keys.waiting,
            self.keys.verifying,
        ]
        status, detail = await self._transition(keys=keys, args=args)
        if status == b"missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if status == b"illegal":
            raise TransitionError(agent_id, detail.decode())
        self.observe(to, reason)
        if self.timed is not None:
            await timings.observe(self.redis, self.keys, self.timed, agent_id, allowed_from, to)
        return int(detail)

    @backend
    async def settle(
        self, agent_id: str, verdicts: Mapping[str, str], principal: str
    ) -> tuple[str, str]:
        """Record ``hubctl verify``'s verdicts (name → ``passed``/``failed``) on a
        NEEDS_VERIFICATION agent: (new state or ``waiting``, reason). Raises
        AgentMissingError, TransitionError (not NEEDS_VERIFICATION), UnknownItemError."""
        keys = [self.keys.agent(agent_id), self.keys.events(agent_id), self.keys.verifying]
        args: list[Any] = [now_ms(), EVENTS_MAXLEN, json.dumps(dict(verdicts)), principal]
        status, detail = await self._settle(keys=keys, args=args)
        if status == b"missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if status == b"illegal":
            raise TransitionError(agent_id, detail.decode())
        if status == b"unknown":
            raise UnknownItemError(detail.decode())
        if status != b"waiting":
            self.observe(AgentState(status.decode()), detail.decode())
        return status.decode(), detail.decode()

    @backend
    async def overdue_verifications(self, now: int, batch: int = 500) -> list[str]:
        """NEEDS_VERIFICATION agents past their deadline (at most ``batch``)."""
        ids: list[bytes] = await self.redis.zrangebyscore(  # type: ignore[assignment]  # bytes
            self.keys.verifying, "-inf", now, start=0, num=batch
        )
        return [i.decode() for i in ids]

    @backend
    async def forget_verifying(self, agent_id: str) -> None:
        """Drop a stray member of the verifying set (its agent is gone or has moved on)."""
        await self.redis.zrem(self.keys.verifying, agent_id)

    @backend
    async def record_event(
        self, agent_id: str, kind: str, data: str, fields: Mapping[str, object] | None = None
    ) -> None:
        """Append a progress/output event and update non-state fields (tails, progress)."""
        args: list[Any] = [kind, data, now_ms(), EVENTS_MAXLEN, *flatten(dict(fields or {}))]
        await self._event(keys=[self.keys.agent(agent_id), self.keys.events(agent_id)], args=args)

    # --- the index ---------------------------------------------------------

    @backend
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
            pipe.delete(
                self.keys.agent(agent_id), self.keys.events(agent_id), self.keys.signed(agent_id)
            )
            pipe.zrem(self.keys.agent_index, agent_id)
            if rec is not None:  # a final agent is no member; a stray one goes with it
                pipe.zrem(self.keys.waiting, SpokeKeys.waiting_member(rec.issuer, agent_id))
            pipe.zrem(self.keys.verifying, agent_id)
            pipe.delete(self.keys.inbox(agent_id), self.keys.inbox_ids(agent_id))
            await pipe.execute()
            if rec is not None:
                await dedupe.release(self.redis, self.keys, rec.issuer, rec.dedupe_key, agent_id)
            swept += 1
        return swept

    @backend
    async def held_agents(self) -> list[AgentRecord]:
        """Every agent a worker holds (STARTING or RUNNING)."""
        held: list[AgentRecord] = []
        for agent_id in await held_scan.held_ids(self.redis, self.keys):  # one script a step
            rec = await self.get_or_none(agent_id)
            if rec is not None:
                held.append(rec)
        return held
