"""Per-principal request rate limits: a token bucket in Redis, shared by every process
that enforces the same limit (several hubs behind one address, several spokeds on one site).

``rate`` tokens per second refill a bucket of ``burst``; each request takes one. An empty
bucket answers RESOURCE_EXHAUSTED with the wait in ``retry_after_ms`` metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import errors

_BUCKET = """
-- KEYS: bucket. ARGV: rate per s, burst. Returns {allowed, wait_ms}.
-- Time comes from Redis itself: callers' clocks differ, and their calls arrive out of order.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


class RateLimitedError(errors.CapacityExceededError):
    reason = "RATE_LIMITED"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request rate per principal; ``rate <= 0`` disables the limit."""

    rate: float = 50.0
    """Sustained requests per second per principal."""
    burst: int = 200
    """Requests a principal may send at once after being idle."""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, limit: RateLimit) -> None:
        self._limit = limit
        self._script = redis.register_script(_BUCKET)

    async def take(self, key: str, principal: str) -> None:
        """Take one token from ``key``'s bucket or raise RateLimitedError."""
        if self._limit.rate <= 0:
            return
        try:
            allowed, wait_ms = await self._script(
                keys=[key], args=[self._limit.rate, self._limit.burst]
            )
        except (RedisError, OSError) as exc:
            raise errors.BackendUnavailableError("redis unavailable") from exc
        if not int(allowed):
            raise RateLimitedError(
                f"{principal} is over its rate of {self._limit.rate:g} requests/s",
                retry_after_ms=str(int(wait_ms)),
            )
