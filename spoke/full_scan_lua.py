"""One step of the one-time scan of every record (spoke/start_up_scan.py ``full_scan``) as one
script, so that spoked does not pack and parse three commands per record (a py-spy profile of
the scan at 100 k queued: redis-py's pipelines were most of spoked's samples beside the calls
it served): for each agent of the step it counts a waiting one in its principal's quota
(records_lua.py ``COUNT_WAITING``'s rule), indexes the start deadline of one not started yet
(spoke/start_deadlines.py), and answers the QUEUED ones whose bullmq job is missing.
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis

from .keys import SpokeKeys

__all__ = ["SCAN_STEP", "ScanStep"]

SCAN_STEP: Final = """
-- KEYS: waiting, start-deadlines. ARGV: the agent key prefix, the bullmq key prefix, agent ids.
-- Returns the ids of QUEUED records whose job (job_id, else cmd-<id>) is not stored.
local orphans = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HMGET', ARGV[1] .. id, 'state', 'issuer', 'job_id', 'expire_ms')
  local state = rec[1]
  if state == 'QUEUED' or state == 'RETRYING' then
    redis.call('ZADD', KEYS[1], 0, (rec[2] or '') .. ':' .. id)
  end
  if state == 'QUEUED' or state == 'AWAITING_APPROVAL' then
    local start_by = tonumber(rec[4] or '') or 0
    if start_by > 0 then redis.call('ZADD', KEYS[2], start_by, id) end
  end
  if state == 'QUEUED' then
    local job = rec[3]
    if not job or job == '' then job = 'cmd-' .. id end
    if redis.call('EXISTS', ARGV[2] .. job) == 0 then orphans[#orphans + 1] = id end
  end
end
return orphans
"""


class ScanStep:
    """``SCAN_STEP`` on one client (the script is loaded once, then called by its hash)."""

    def __init__(self, redis: aioredis.Redis, keys: SpokeKeys) -> None:
        self._script = redis.register_script(SCAN_STEP)
        self._keys = [keys.waiting, keys.start_deadlines]
        self._prefixes = [keys.agent(""), keys.bull("")]

    async def __call__(self, agent_ids: list[str]) -> list[str]:
        """One step over ``agent_ids`` (one round trip): the QUEUED ones without a job."""
        if not agent_ids:
            return []
        found: list[bytes] = await self._script(keys=self._keys, args=[*self._prefixes, *agent_ids])
        return [raw.decode() for raw in found]
