"""The spoke's durable state in Redis, composed: records, jobs, kills and slots.

``AgentQueue`` opens the connections and holds one of each part:

* ``records`` (spoke/records.py): the state machine, event streams, ``wait_final``, ``follow``
  for callers, and ``worker_records``, the same on a pool of the worker's own;
* ``fanout`` (spoke/fanout.py): the one reader of every watched event stream;
* ``jobs`` (spoke/jobs.py): every bullmq call, the Worker factory included;
* ``kills`` (spoke/kills.py): kill requests and their routing to workers;
* ``slots`` (spoke/slots.py): per-profile run slots (the worker's pool).

Connections: callers' short calls share one pool, the worker's state writes another, bullmq
has its own, and the watch reader one connection. Nothing blocks in Redis on the callers'
or the worker's pool, so watchers cannot exhaust them (PITFALLS).

It also does the few operations that span records and jobs (spawn, replay, drain, dead
letters, requeueing orphans). Errors are spoke/backend.py's ``QueueError`` family.
"""

from __future__ import annotations

from typing import Any

from hubspoke.redis_access import RedisAccess
from hubspoke.redis_mux import RedisMux

from . import approvals, job_pending, start_deadlines, start_up_scan
from .backend import AgentMissingError, TransitionError, backend, command_client, now_ms
from .fanout import StreamFanout
from .feed import Feed
from .inbox import Inboxes
from .jobs import Jobs
from .keys import SpokeKeys
from .kills import Kills
from .model import AgentRecord, AgentState, SpawnRequest
from .pages import Page, collect
from .records import Records, StateObserver
from .slots import Slots

REPLAYABLE = (AgentState.FAILED, AgentState.TIMED_OUT, AgentState.DEAD_LETTERED)


class AgentQueue:
    """The spoke's durable state. Create inside the running loop; close with ``close()``."""

    def __init__(
        self,
        redis: str | RedisAccess,
        spoke: str,
        *,
        op_timeout_s: float = 5.0,
        observe: StateObserver | None = None,
    ) -> None:
        self.keys = SpokeKeys(spoke)
        self.access = redis
        """The spoke's Redis access (user, password file, TLS), or a bare URL."""
        # Our own calls are short: bound them. bullmq's blocking calls get their own client,
        # the watch reader its own connection, and the worker its own pool, so that no
        # number of callers can starve the worker's state writes.
        self.redis = command_client(redis, op_timeout_s)
        self.worker_redis = command_client(redis, op_timeout_s)
        self.mux = RedisMux.of(self.redis, op_timeout_s)
        """Callers' hot path (admission, status read, spawn script) on one pipelined
        connection (shared/redis_mux.py; issue 13)."""
        self.fanout = StreamFanout(redis, self.keys, self.redis)
        self.records = Records(self.redis, self.keys, self.fanout, observe, mux=self.mux)
        self.worker_records = Records(self.worker_redis, self.keys, self.fanout, observe)
        self.jobs = Jobs(redis, self.keys)
        self.kills = Kills(self.records, self.jobs)
        self.feed = Feed(self.redis, self.keys, self.fanout)  # every state change, in order
        self.slots = Slots(self.worker_redis, self.keys)
        self.inboxes = Inboxes(self.redis, self.keys)
        """Messages ``hubctl send`` kept for agents (spoke/inbox.py)."""
        self.worker_inboxes = Inboxes(self.worker_redis, self.keys)
        self.approvals = approvals.Approvals(self.records, self.jobs)

    async def close(self) -> None:
        await self.fanout.close()
        await self.mux.close()
        await self.jobs.close()
        await self.redis.aclose()
        await self.worker_redis.aclose()

    @staticmethod
    def one_trip(req: SpawnRequest) -> bool:
        """Whether ``create`` can take the command's admission along (``admit``): a spawn due
        now, without approvals or a dedupe key (nothing to read before it is stored)."""
        return (
            req.delay_ms <= 0
            and req.accept_ms <= now_ms()
            and not req.approvals_required
            and not req.dedupe_key
        )

    async def create(
        self,
        req: SpawnRequest,
        max_backlog: int,
        max_per_principal: int = 0,
        admit: tuple[list[str], list[Any]] | None = None,
    ) -> tuple[AgentRecord, bool]:
        """Store a spawn and queue it; idempotent on the agent id. Refused before anything is
        stored when the issuer already has ``max_per_principal`` agents waiting (0: no quota)
        or the queue holds ``max_backlog``.

        Returns the record and whether this call created it. The record is written first
        (``Records.insert``), the bullmq job after it: a crash between the two leaves a
        QUEUED record that spoked's start-up scan (spoke/start_up_scan.py: the write is
        marked in spoke/job_pending.py's index first) and any retry of the same spawn put back
        on the queue. Callers shield this from cancellation, so a client that gives up
        mid-call cannot tear it. Two round trips in all; one for a spawn due now that needs
        no approvals, whose job bullmq's add script writes inside the create script
        (spoke/spawn_lua.py: a crash cannot come between the two). With ``admit`` (only when
        ``one_trip(req)``) the command's admission runs first in that script: one round trip
        per spawn in all (spoke/spawn_lua.py ``AdmissionRefusedError`` when it refuses).
        """
        add = None
        if req.delay_ms <= 0 and req.accept_ms <= now_ms() and not req.approvals_required:
            add = self.jobs.add_call(req.agent_id, req.priority, req.backoff_ms)
        if admit is not None and (add is None or not self.one_trip(req)):
            raise ValueError("an admission rides only on a spawn create() stores in one script")
        # Two steps without ``add``: marked until the job is there (spoke/job_pending.py).
        async with job_pending.two_step(self.redis, self.keys, req.agent_id, when=add is None):
            rec, created = await self.records.insert(
                req, max_backlog, max_per_principal, add, admit
            )
            if (created or rec.state is AgentState.QUEUED) and approvals.held(rec):
                rec = await self.approvals.hold(rec)  # no job until approved (spoke/approvals.py)
            elif (created and add is None) or (not created and rec.state is AgentState.QUEUED):
                await self.jobs.enqueue(rec)  # for an existing one: heals a crash between the two
        return rec, created

    async def replay(self, agent_id: str, command_id: str, start_by_ms: int) -> AgentRecord:
        """Run a failed agent again with fresh attempts, as a new job (the old one leaves the
        dead-letter set), to start by ``start_by_ms`` or expire. Idempotent on the replay's
        command id: a retried replay returns the agent instead of failing on its new state.
        The record keeps its owner (issuer) and its envelopes."""
        rec = await self.records.get(agent_id)
        if rec.replay_command == command_id:
            return rec
        async with job_pending.two_step(self.redis, self.keys, agent_id):  # two steps
            replays = rec.replays + 1
            new_job = SpokeKeys.replay_job_id(agent_id, replays)
            await self.records.transition(
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
                    # The replay's start deadline, counted from the original spawn: never cleared.
                    "expire_ms": start_by_ms,
                },
            )
            await start_deadlines.add(self.redis, self.keys, [(agent_id, start_by_ms)])
            if rec.job_id:
                await self.jobs.remove(rec.job_id)
            again = await self.records.get(agent_id)
            await self.jobs.enqueue(again)
        return again

    async def dead_letters(self, page_size: int, token: str, owner: str | None = None) -> Page:
        """The bullmq failed set, newest first, as agent records (with ``owner``: only the
        agents that issuer spawned, pages filled as spoke/pages.py says)."""

        def keep(rec: AgentRecord) -> bool:
            return rec.issuer == owner

        return await collect(
            self.jobs.failed,
            self.records.get_aligned,
            token,
            page_size,
            keep if owner is not None else None,
        )

    async def drain(self) -> int:
        """Cancel every waiting agent (KILLED, reason DRAINED) and remove its job."""
        drained = 0
        while True:
            jobs = await self.jobs.waiting(500)
            if not jobs:
                return drained
            for job_id, agent_id in jobs:
                try:
                    await self.records.transition(
                        agent_id,
                        [AgentState.QUEUED, AgentState.RETRYING],
                        AgentState.KILLED,
                        "DRAINED",
                    )
                    drained += 1
                except (TransitionError, AgentMissingError):
                    pass  # already started or gone: not ours to cancel
                await self.jobs.remove(job_id)

    async def requeue_orphans(self) -> int:
        """Scan every record once (spoke/start_up_scan.py ``full_scan``, owed after the schema
        step 1 -> 2): count waiting agents in their quota, index start deadlines, and put
        QUEUED records with no bullmq job back on the queue; how many were."""
        requeued, _ = await start_up_scan.full_scan(self, start_up_scan.Pacing())
        return requeued

    @backend
    async def maxmemory_policy(self) -> str:
        conf: dict[Any, Any] = await self.redis.config_get("maxmemory-policy")
        value = conf.get(b"maxmemory-policy") or conf.get("maxmemory-policy") or b""
        return value.decode() if isinstance(value, bytes) else str(value)
