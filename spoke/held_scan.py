"""The agents a worker holds (STARTING or RUNNING), found at spoked's start-up
(``Records.held_agents``, for spoke/worker.py ``reap_dead_local_workers``): the agent index is
walked in steps (spoke/index_walk.py, the one cursor by create time) and one script per step
answers only the held ids, so spoked no longer parses one reply per record of the backlog
before its worker takes a job (100 k queued: 1.33 s wall and 1.14 s of spoked's CPU at every
start, issue 13).
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis

from .index_walk import walk
from .keys import SpokeKeys

__all__ = ["HELD_OF", "STEP", "held_ids"]

STEP: Final = 1000
"""Records one step reads (Redis runs a step's script at once: about a millisecond)."""

HELD_OF: Final = """
-- ARGV: the agent key prefix, then agent ids. Returns those whose record is STARTING or RUNNING.
local out = {}
for i = 2, #ARGV do
  local state = redis.call('HGET', ARGV[1] .. ARGV[i], 'state')
  if state == 'STARTING' or state == 'RUNNING' then out[#out + 1] = ARGV[i] end
end
return out
"""


async def held_ids(redis: aioredis.Redis, keys: SpokeKeys, step: int = STEP) -> list[str]:
    """Ids of every agent whose record is STARTING or RUNNING: per step of the index walk, one
    round trip for its ids and one for the script."""
    script = redis.register_script(HELD_OF)
    prefix = keys.agent("")
    held: list[str] = []
    async for ids in walk(redis, keys, step):
        found: list[bytes] = await script(keys=[], args=[prefix, *ids])
        held += [raw.decode() for raw in found]
    return held
