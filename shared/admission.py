"""The Redis half of admitting a verified command: one rate token for its principal, then
its nonce claims, in one script and one round trip.

The rate is a token bucket per principal, shared by every process that enforces the same
limit (several hubs behind one address, several spokeds on one site): ``rate`` tokens per
second refill a bucket of ``burst``; each request takes one. An empty bucket answers
RESOURCE_EXHAUSTED with the wait in ``retry_after_ms`` metadata, and claims nothing, so a
flood cannot fill the nonce store. A nonce is ``SET`` with a TTL that covers its command's
validity; a command carrying a nonce already seen claims none of its nonces (a relay
carries two: the hub's and the client's). Keys only checked (``seen``) count as seen nonces
but are never written: the hub passes the nonce's key in its old layout there, so a nonce
claimed before an upgrade stays claimed until it expires.

Every key of one call must share a Redis Cluster hash slot (the hub tags them per principal).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from . import commands, errors
from .redis_mux import RedisMux, ScriptRef

__all__ = ["ADMIT_SCRIPT", "Admission", "NonceClaim", "RateLimit", "RateLimitedError"]

_ADMIT = """
-- KEYS[1]: the principal's bucket; KEYS[2..n+1]: nonce keys to claim; KEYS[n+2..]: nonce keys
-- only checked. ARGV[1]: rate per s (<= 0: no limit), ARGV[2]: burst, ARGV[3..n+2]: each
-- claimed nonce's TTL (ms), n = #ARGV - 2.
-- Returns {0, 0} admitted, {1, wait_ms} over the rate, {2, i} nonce i was seen before.
-- Time comes from Redis itself: callers' clocks differ, and their calls arrive out of order.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
  local wait = 0
  if tokens >= 1 then
    tokens = tokens - 1
  else
    wait = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
  if wait > 0 then
    return {1, wait}
  end
end
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return {2, i - 1}
  end
end
for i = 2, #ARGV - 1 do
  redis.call('SET', KEYS[i], '1', 'PX', ARGV[i + 1])
end
return {0, 0}
"""

ADMIT_SCRIPT = _ADMIT
"""The admission script's text (its reply: ``{verdict, detail}``, verdict 0 when admitted)."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request rate per principal; ``rate <= 0`` disables the limit."""

    rate: float = 50.0
    """Sustained requests per second per principal."""
    burst: int = 200
    """Requests a principal may send at once after being idle."""


@dataclass(frozen=True, slots=True)
class NonceClaim:
    """A nonce key to claim, kept ``ttl_ms`` (at least 1 s) so its command cannot replay."""

    key: str
    ttl_ms: int

    @classmethod
    def until_expired(cls, key: str, expires: dt.datetime, max_skew: dt.timedelta) -> NonceClaim:
        """Kept while its command can still be accepted: until it expires, plus the skew."""
        ttl = expires + max_skew - commands.now()
        return cls(key, int(ttl.total_seconds() * 1000))


class RateLimitedError(errors.CapacityExceededError):
    reason = "RATE_LIMITED"


class Admission:
    def __init__(
        self, redis: aioredis.Redis, limit: RateLimit, mux: RedisMux | None = None
    ) -> None:
        self._limit = limit
        self._script = redis.register_script(_ADMIT)
        self._mux = mux
        """The spoke's pipelined connection (shared/redis_mux.py), when it has one."""
        self._ref = ScriptRef.of(self._script)

    async def admit(
        self,
        principal: str,
        rate_key: str,
        claims: Sequence[NonceClaim],
        seen: Sequence[str] = (),
    ) -> None:
        """Take a token from ``principal``'s bucket, then claim every nonce, atomically;
        a key in ``seen`` that exists refuses the command as a claimed nonce would.

        Raises:
            RateLimitedError: the bucket is empty; nothing was claimed.
            NonceReusedError: a nonce was seen before; none was claimed (the token is spent).
            BackendUnavailableError: Redis did not answer.
        """
        await self.admit_and_read(principal, rate_key, claims, seen)

    async def admit_and_read(
        self,
        principal: str,
        rate_key: str,
        claims: Sequence[NonceClaim],
        seen: Sequence[str] = (),
        read: str | None = None,
    ) -> dict[bytes, bytes] | None:
        """``admit``, and with ``read`` the HGETALL of that hash right after the script in the
        same round trip (a status command's record: one round trip in all). Returns the hash
        read (empty if it does not exist), or None without ``read``."""
        keys, args = self.call(rate_key, claims, seen)
        raw: dict[bytes, bytes] | None = None
        try:
            if self._mux is not None:
                (verdict, detail), raw = await _on_mux(self._mux, self._ref, keys, args, read)
            elif read is None:
                verdict, detail = await self._script(keys=keys, args=args)
            else:
                (verdict, detail), raw = await read_after_script(self._script, keys, args, read)
        except (RedisError, OSError) as exc:
            raise errors.BackendUnavailableError("redis unavailable") from exc
        self._refuse(principal, int(verdict), detail)
        return raw

    async def admit_then(
        self,
        principal: str,
        rate_key: str,
        claims: Sequence[NonceClaim],
        seen: Sequence[str],
        queue: Callable[[Any], object],
    ) -> list[Any]:
        """``admit``, and the reads ``queue`` adds to a pipeline right after the script, in
        the same round trip (the hub's per-command reads: hub/prefetch.py). Returns their
        replies (an error reply as its exception); raises as ``admit`` does."""
        keys = [rate_key, *(c.key for c in claims), *seen]
        args = [self._limit.rate, self._limit.burst, *(max(c.ttl_ms, 1000) for c in claims)]
        try:
            (verdict, detail), *replies = await queue_after_script(self._script, keys, args, queue)
        except (RedisError, OSError) as exc:
            raise errors.BackendUnavailableError("redis unavailable") from exc
        self._refuse(principal, int(verdict), detail)
        return replies

    def call(
        self, rate_key: str, claims: Sequence[NonceClaim], seen: Sequence[str] = ()
    ) -> tuple[list[str], list[Any]]:
        """The admission script's keys and arguments, for a script of the caller's that runs
        ``ADMIT_SCRIPT`` first and the rest only if it admits (spoke/spawn_lua.py: a spawn
        in one round trip); ``refuse`` then answers its verdict as ``admit`` would."""
        keys = [rate_key, *(c.key for c in claims), *seen]
        args: list[Any] = [
            self._limit.rate,
            self._limit.burst,
            *(max(c.ttl_ms, 1000) for c in claims),
        ]
        return keys, args

    def refuse(self, principal: str, verdict: int, detail: Any) -> None:
        """Raise what ``admit`` raises for the script's ``verdict`` (nothing when 0)."""
        self._refuse(principal, verdict, detail)

    def _refuse(self, principal: str, verdict: int, detail: Any) -> None:
        if int(verdict) == 1:
            raise RateLimitedError(
                f"{principal} is over its rate of {self._limit.rate:g} requests/s",
                retry_after_ms=str(int(detail)),
            )
        if int(verdict) == 2:
            raise errors.NonceReusedError("nonce already used: replayed command")


async def _on_mux(
    mux: RedisMux, ref: ScriptRef, keys: Sequence[str], args: Sequence[object], read: str | None
) -> tuple[Any, dict[bytes, bytes] | None]:
    """The script's reply (and ``read``'s HGETALL after it, in the same round trip) on the
    spoke's pipelined connection."""
    replies = await mux.checked_script(ref, keys, args, *([("HGETALL", read)] if read else []))
    if read is None:
        return replies[0], None
    flat = replies[1]  # a map under RESP3, a flat list of fields and values under RESP2
    if isinstance(flat, dict):
        return replies[0], flat
    return replies[0], dict(zip(flat[::2], flat[1::2], strict=True))


async def read_after_script(
    script: Any, keys: Sequence[str], args: Sequence[object], read: str
) -> tuple[Any, dict[bytes, bytes]]:
    """The script's reply and the HGETALL of ``read``, in one pipelined round trip: EVALSHA
    directly (a redis-py pipeline of Script objects would send SCRIPT EXISTS first), loading
    the script once if Redis does not have it."""
    client: aioredis.Redis = script.registered_client
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        pipe.hgetall(read)
        reply, raw = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError) and attempt == 0:
            await client.script_load(script.script)
            continue
        for result in (reply, raw):
            if isinstance(result, Exception):
                raise result
        return reply, raw
    raise NoScriptError("script not loaded")


async def queue_after_script(
    script: Any, keys: Sequence[str], args: Sequence[object], queue: Callable[[Any], object]
) -> list[Any]:
    """The script's reply, then the replies of what ``queue`` adds to the pipeline, in one
    round trip, as :func:`read_after_script` (EVALSHA, the script loaded once if missing).
    The script's error raises; the others' are returned as exceptions."""
    client: aioredis.Redis = script.registered_client
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        queue(pipe)
        reply, *rest = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError) and attempt == 0:
            await client.script_load(script.script)
            continue
        if isinstance(reply, Exception):
            raise reply
        return [reply, *rest]
    raise NoScriptError("script not loaded")
