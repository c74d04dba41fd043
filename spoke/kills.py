"""Kill routing: a kill request is recorded on the agent, then reaches whoever runs it.

A waiting agent (QUEUED or RETRYING) is KILLED at once by one script and its job removed,
and so is one that waits on a person (NEEDS_INPUT, NEEDS_VERIFICATION; it has no job);
a held one (STARTING or RUNNING) is marked ``kill_requested`` and its id published on the
spoke's kill channel, which every worker process listens to (the worker that holds it also
polls the mark, ``Records.kill_requested``, should a message be missed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .backend import AgentMissingError, TransitionError, backend, now_ms
from .jobs import Jobs
from .model import AgentState
from .records import EVENTS_MAXLEN, Records
from .records_lua import with_feed

_REQUEST_KILL = """
-- KEYS: agent, events, waiting, verifying. ARGV: kill_command_id, now_ms, maxlen
-- An agent no process holds (waiting, or waiting on a person) is KILLED here and now.
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
if cur == 'QUEUED' or cur == 'RETRYING' or cur == 'NEEDS_INPUT'
    or cur == 'NEEDS_VERIFICATION' or cur == 'AWAITING_APPROVAL' then
  redis.call('HSET', KEYS[1], 'state', 'KILLED', 'reason', 'KILL_REQUESTED',
    'end_ms', ARGV[2], 'kill_requested', ARGV[1])
  local who = redis.call('HMGET', KEYS[1], 'issuer', 'agent_id')
  redis.call('ZREM', KEYS[3], (who[1] or '') .. ':' .. (who[2] or ''))
  redis.call('ZREM', KEYS[4], who[2] or '')
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0',
    'kind', 'state', 'state', 'KILLED', 'reason', 'KILL_REQUESTED', 'time', ARGV[2])
  feed_append(KEYS[1], 'KILLED', 'KILL_REQUESTED', ARGV[2], seq)
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


class Kills:
    """Kill requests of one spoke: made by the service, heard by every worker."""

    def __init__(self, records: Records, jobs: Jobs) -> None:
        self.records = records
        self.jobs = jobs
        self.keys = records.keys
        self._kill = records.redis.register_script(with_feed(_REQUEST_KILL))

    @backend
    async def request(self, agent_id: str, kill_command_id: str) -> KillOutcome:
        keys = [
            self.keys.agent(agent_id),
            self.keys.events(agent_id),
            self.keys.waiting,
            self.keys.verifying,
        ]
        action, prev = await self._kill(keys=keys, args=[kill_command_id, now_ms(), EVENTS_MAXLEN])
        if action == b"missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if action == b"final":
            raise TransitionError(agent_id, prev.decode())
        outcome = KillOutcome(action.decode(), prev.decode())
        if outcome.action == "killed":
            self.records.observe(AgentState.KILLED, "KILL_REQUESTED")
            if outcome.previous in (AgentState.QUEUED, AgentState.RETRYING):
                rec = await self.records.get(agent_id)
                await self.jobs.remove(rec.job_id)  # best effort: a worker skips it anyway
        else:
            await self.records.redis.publish(self.keys.kill_channel, agent_id)
        return outcome

    @asynccontextmanager
    async def requests(self) -> AsyncIterator[aioredis.client.PubSub]:
        """Subscribe to kill requests for this spoke (every worker process listens)."""
        pubsub = self.jobs.redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.kill_channel)
            yield pubsub
        finally:
            # Redis may be gone: unsubscribing can fail, closing must still happen.
            with contextlib.suppress(RedisError, OSError):
                await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
