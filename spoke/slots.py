"""Run slots per profile (``max_concurrency``), shared by every spoked on one Redis.

A slot is a lease in a sorted set scored by its expiry: a crashed worker's slot frees
itself when the lease runs out, and a live one renews it while its agent runs.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .backend import backend, now_ms
from .keys import SpokeKeys

_SLOT = """
-- KEYS: slots zset. ARGV: agent_id, limit, now_ms, lease_ms
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
  return 1
end
return 0
"""


class Slots:
    def __init__(self, redis: aioredis.Redis, keys: SpokeKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._slot = redis.register_script(_SLOT)

    @backend
    async def acquire(self, profile: str, agent_id: str, limit: int, lease_ms: int) -> bool:
        """Take (or renew) one of ``limit`` run slots of a profile for ``lease_ms``."""
        got = await self._slot(
            keys=[self.keys.profile_slots(profile)], args=[agent_id, limit, now_ms(), lease_ms]
        )
        return bool(got)

    @backend
    async def release(self, profile: str, agent_id: str) -> None:
        await self.redis.zrem(self.keys.profile_slots(profile), agent_id)
