"""The messages ``hubctl send`` leaves for an agent, kept in Redis with their signatures.

Each message is one element of the agent's inbox list (``SpokeKeys.inbox``): JSON with the
sender, the text, the time, the command id and the client's signed envelope and the hub's
relay (base64) exactly as received, so it can be verified again later. Message ``seq`` N is
element N-1. ``Inboxes.keep`` appends one atomically (one Lua script) with its event (kind
``input``, the text as data) and the record's ``inputs`` count, and refuses:

* an agent that does not exist, or one in a state that takes no input (a final state, or
  NEEDS_VERIFICATION): ``NoInputError`` with the state;
* a message over ``max_inputs_per_agent``: ``InboxFullError``;
* a command id already kept with other text: ``AgentReusedError`` (the same text: the
  retry is answered with the message kept, nothing is added).

A message to a NEEDS_INPUT agent also queues its next attempt (``Inboxes.resume``): the
agent moves NEEDS_INPUT → QUEUED (reason INPUT_RECEIVED) with a new bullmq job, so it waits
its turn and its profile's slots like any other; the attempt finds every message in its
inbox before its program starts (spoke/inbox_files.py). A resumed agent is not held to its
start deadline (it started before). The worker reads ``messages`` before each start and
while the agent runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from redis import asyncio as aioredis

from . import job_pending
from .backend import (
    AgentMissingError,
    AgentReusedError,
    QueueError,
    TransitionError,
    backend,
    now_ms,
)
from .inbox_files import Message
from .jobs import Jobs
from .keys import SpokeKeys
from .model import AgentState
from .records import EVENTS_MAXLEN, Records

__all__ = ["TAKES_INPUT", "InboxFullError", "Inboxes", "Kept", "NoInputError"]

TAKES_INPUT: Final = frozenset(
    {
        AgentState.QUEUED,
        AgentState.STARTING,
        AgentState.RUNNING,
        AgentState.RETRYING,
        AgentState.NEEDS_INPUT,
        AgentState.AWAITING_APPROVAL,
    }
)
"""States in which a message is kept: delivered now (running), at the next start (waiting,
or held for approval), or as the answer that starts the next attempt (NEEDS_INPUT)."""

RESUMED: Final = "INPUT_RECEIVED"
"""The reason of the NEEDS_INPUT → QUEUED change a message makes."""

KEEP: Final = """
-- KEYS: agent, events, inbox, inbox_ids.
-- ARGV: command_id, digest, entry, text, sender, now_ms, events_maxlen, max_inputs, states.
-- Returns {status, seq, state}: ok | again | reused | missing | illegal | full.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', 0, ''} end
local prior = redis.call('HGET', KEYS[4], ARGV[1])
if prior then
  local sep = string.find(prior, '/', 1, true)
  local seq = tonumber(string.sub(prior, 1, sep - 1))
  if string.sub(prior, sep + 1) == ARGV[2] then return {'again', seq, state} end
  return {'reused', seq, state}
end
if not string.find(',' .. ARGV[9] .. ',', ',' .. state .. ',', 1, true) then
  return {'illegal', 0, state}
end
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[8]) then return {'full', 0, state} end
local seq = redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], seq .. '/' .. ARGV[2])
redis.call('HINCRBY', KEYS[1], 'inputs', 1)
local ev = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], ev .. '-0', 'kind', 'input',
  'data', ARGV[4], 'time', ARGV[6], 'sender', ARGV[5], 'input_seq', seq)
return {'ok', seq, state}
"""


class NoInputError(QueueError):
    """The agent is in a state that takes no message."""

    def __init__(self, agent_id: str, state: str) -> None:
        super().__init__(f"agent {agent_id} is {state}: it takes no input")
        self.state = state


class InboxFullError(QueueError):
    """The agent holds ``max_inputs_per_agent`` messages already."""

    def __init__(self, agent_id: str, limit: int) -> None:
        super().__init__(f"agent {agent_id} holds {limit} messages already")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Kept:
    """A message kept (or found kept by an earlier try of the same command)."""

    seq: int
    state: AgentState
    """The agent's state when it was kept."""
    again: bool = False


def _digest(sender: str, text: str) -> str:
    return hashlib.sha256(json.dumps([sender, text]).encode()).hexdigest()


class Inboxes:
    """Every agent's kept messages on one spoke's Redis."""

    def __init__(self, redis: aioredis.Redis, keys: SpokeKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._keep = redis.register_script(KEEP)

    @backend
    async def keep(
        self,
        agent_id: str,
        *,
        command_id: str,
        sender: str,
        text: str,
        envelope: bytes,
        relay: bytes,
        max_inputs: int,
    ) -> Kept:
        """Keep one verified message for the agent (module docstring)."""
        now = now_ms()
        entry = json.dumps(
            {
                "from": sender,
                "text": text,
                "time_ms": now,
                "command_id": command_id,
                "envelope": base64.b64encode(envelope).decode(),
                "relay": base64.b64encode(relay).decode(),
            },
            ensure_ascii=False,
        )
        states = ",".join(sorted(s.value for s in TAKES_INPUT))
        keys = [
            self.keys.agent(agent_id),
            self.keys.events(agent_id),
            self.keys.inbox(agent_id),
            self.keys.inbox_ids(agent_id),
        ]
        args: list[Any] = [
            command_id,
            _digest(sender, text),
            entry,
            text,
            sender,
            now,
            EVENTS_MAXLEN,
            max_inputs,
            states,
        ]
        status, seq, state = await self._keep(keys=keys, args=args)
        status, state = status.decode(), state.decode()
        if status == "missing":
            raise AgentMissingError(f"agent {agent_id} not found")
        if status == "illegal":
            raise NoInputError(agent_id, state)
        if status == "full":
            raise InboxFullError(agent_id, max_inputs)
        if status == "reused":
            raise AgentReusedError(
                f"command id {command_id} already sent agent {agent_id} another message"
            )
        return Kept(int(seq), AgentState(state), again=status == "again")

    @backend
    async def messages(self, agent_id: str, after_seq: int = 0) -> list[Message]:
        """The agent's messages with seq above ``after_seq``, oldest first."""
        rows: list[bytes] = await self.redis.lrange(  # type: ignore[assignment]  # bytes: decode_responses is off
            self.keys.inbox(agent_id), after_seq, -1
        )
        return list(_parse(rows, after_seq + 1))

    @backend
    async def signed(self, agent_id: str, seq: int) -> tuple[bytes, bytes]:
        """Message ``seq``'s signed envelope and relay as received (empty if none)."""
        row = await self.redis.lindex(self.keys.inbox(agent_id), seq - 1)
        if row is None:
            return b"", b""
        doc = json.loads(row)
        return base64.b64decode(doc["envelope"]), base64.b64decode(doc["relay"])


def _parse(rows: Iterable[bytes], first_seq: int) -> Iterable[Message]:
    for n, raw in enumerate(rows):
        doc = json.loads(raw)
        yield Message(
            seq=first_seq + n,
            sender=str(doc.get("from", "")),
            text=str(doc.get("text", "")),
            time_ms=int(doc.get("time_ms", 0)),
        )


async def resume(records: Records, jobs: Jobs, agent_id: str, seq: int) -> bool:
    """Queue the next attempt of a NEEDS_INPUT agent that message ``seq`` answered; False if
    it is no longer NEEDS_INPUT (another message resumed it first, or it was killed)."""
    rec = await records.get(agent_id)
    if rec.state is not AgentState.NEEDS_INPUT:
        return False
    job_id = f"input{seq}-a{rec.attempt}-{agent_id}"  # not cmd-…: see SpokeKeys.replay_job_id
    async with job_pending.two_step(records.redis, records.keys, agent_id):  # two steps
        try:
            await records.transition(
                agent_id,
                [AgentState.NEEDS_INPUT],
                AgentState.QUEUED,
                RESUMED,
                {
                    "job_id": job_id,
                    "exit_code": "",
                    "end_ms": "",
                    "kill_requested": "",
                    "pid": "",
                    "pgid": "",
                    "start_ticks": "",
                    "not_before_ms": "",
                    # It started in time once: the next attempt waits for its turn, not a deadline.
                    "expire_ms": "",
                },
            )
        except TransitionError:
            return False
        await jobs.enqueue(await records.get(agent_id))
    return True
