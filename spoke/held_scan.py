"""The agents a worker holds (STARTING or RUNNING), found at spoked's start-up
(``Records.held_agents``, for spoke/worker.py ``reap_dead_local_workers``) by one script per
step of the agent index that answers only their ids: spoked no longer parses one reply per
record of the backlog before its worker takes a job (100 k queued: 1.33 s wall and 1.14 s of
spoked's CPU at every start, issue 13).
"""

from __future__ import annotations

from typing import Any, Final

import redis.asyncio as aioredis

from .keys import SpokeKeys

__all__ = ["HELD_STEP", "STEP", "held_ids"]

STEP: Final = 1000
"""Records one step reads (Redis runs a step's script at once: about a millisecond)."""

HELD_STEP: Final = """
-- KEYS: the agent index. ARGV: the agent key prefix, the cursor (the lowest create time not
-- yet read in full, and how many members of that score were read), the step's size.
-- Reads one step from the cursor (by create time, not rank: the sweeper forgetting old agents
-- meanwhile cannot shift it past unread records); returns {low, at_low, read, held ids...}.
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf', 'WITHSCORES', 'LIMIT',
  tonumber(ARGV[3]), tonumber(ARGV[4]))
local out = {ARGV[2], ARGV[3], 0}
if #rows == 0 then return out end
local low, at_low = ARGV[2], tonumber(ARGV[3])
local last = rows[#rows]
if tonumber(last) ~= tonumber(low) then at_low = 0 end
for i = 1, #rows, 2 do
  local state = redis.call('HGET', ARGV[1] .. rows[i], 'state')
  if state == 'STARTING' or state == 'RUNNING' then out[#out + 1] = rows[i] end
  if tonumber(rows[i + 1]) == tonumber(last) then at_low = at_low + 1 end
end
out[1], out[2], out[3] = last, at_low, #rows / 2
return out
"""


async def held_ids(redis: aioredis.Redis, keys: SpokeKeys, step: int = STEP) -> list[str]:
    """Ids of every agent whose record is STARTING or RUNNING, one round trip per step."""
    script = redis.register_script(HELD_STEP)
    prefix = keys.agent("")
    held: list[str] = []
    low, at_low = b"-inf", 0
    while True:
        reply: list[Any] = await script(keys=[keys.agent_index], args=[prefix, low, at_low, step])
        low, at_low, read = reply[0], int(reply[1]), int(reply[2])
        held += [raw.decode() for raw in reply[3:]]
        if not read:
            return held
