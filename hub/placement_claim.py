"""Score candidates, claim the command id for the chosen spoke and count the placement, in
one Redis script, so several hubs on one Redis never place one command twice.

Keys::

    federation:hub:{hub}:claim:{issuer}:{command_id}   the spoke a command was placed on;
                                                       SET NX, TTL the claim TTL
    federation:hub:{hub}:placed:{spoke}                sorted set: placements (score: Redis
                                                       time in ms), kept ``keep_ms``

Score of a candidate: (running + queued at its last status + placements since that status)
/ capacity; the lowest wins, ties to the first in the order given (the caller shuffles, so
ties break at random). A command id already claimed goes to its claimed spoke whatever the
candidates. A dry run reads the same numbers and writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from hubspoke import errors

from .placement import Candidate

__all__ = ["ClaimStore", "Claimed", "claim_key", "placed_key"]

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# KEYS[1] claim key, KEYS[2..] placed sets (one per candidate, in order).
# ARGV: member, claim ttl ms, dry ("1"/"0"), keep ms, then per candidate: name, base,
# capacity, observed ms. Returns {spoke, claimed (0/1), placed count per candidate...}.
_PLACE = """
local claimed = redis.call('GET', KEYS[1])
if claimed then return {claimed, 1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[4])
local best, best_score = nil, nil
local counts = {}
for i = 2, #KEYS do
  local j = 5 + (i - 2) * 4
  local placed = redis.call('ZCOUNT', KEYS[i], '(' .. ARGV[j + 3], '+inf')
  counts[#counts + 1] = placed
  local score = (tonumber(ARGV[j + 1]) + placed) / tonumber(ARGV[j + 2])
  if best == nil or score < best_score then best, best_score = i, score end
end
if best == nil then return {'', 0} end
local name = ARGV[5 + (best - 2) * 4]
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], name, 'PX', ARGV[2], 'NX')
  redis.call('ZADD', KEYS[best], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[best], '-inf', now - keep)
  redis.call('PEXPIRE', KEYS[best], keep)
end
local out = {name, 0}
for _, c in ipairs(counts) do out[#out + 1] = c end
return out
"""


def claim_key(hub: str, issuer: str, command_id: str) -> str:
    return f"federation:hub:{hub}:claim:{issuer}:{command_id}"


def placed_key(hub: str, spoke: str) -> str:
    return f"federation:hub:{hub}:placed:{spoke}"


@dataclass(frozen=True, slots=True)
class Claimed:
    """The outcome of one placement (or dry run)."""

    spoke: str
    """The chosen (or earlier claimed) spoke; empty when there was no candidate."""
    already: bool
    """The command id was claimed before: ``spoke`` is where it went then."""
    placed: tuple[int, ...] = ()
    """Placements since each candidate's status, in the candidates' order (not when
    ``already``)."""


class ClaimStore:
    """The placement script over the hub's Redis client (not owned)."""

    KEEP_MS = 10 * 60 * 1000
    """How long a placement stays counted at most (a spoke silent longer than this has no
    fresh status and is no candidate anyway)."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, timeout_s: float) -> None:
        self._redis = client
        self._hub = hub
        self._timeout = timeout_s
        self._place = client.register_script(_PLACE)

    async def claimed(self, issuer: str, command_id: str) -> str:
        """The spoke ``command_id`` of ``issuer`` was placed on, or ""."""
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._redis.get(claim_key(self._hub, issuer, command_id))
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
        return _text(found) if found else ""

    async def pin(self, issuer: str, command_id: str, spoke: str, claim_ttl_s: float) -> None:
        """Claim ``command_id`` for ``spoke`` whatever it held (a dedupe key sent it there)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(
                    claim_key(self._hub, issuer, command_id),
                    spoke,
                    px=max(1, int(claim_ttl_s * 1000)),
                )
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc

    async def place(
        self,
        issuer: str,
        command_id: str,
        candidates: Sequence[Candidate],
        *,
        claim_ttl_s: float,
        dry_run: bool,
    ) -> Claimed:
        """Pick the least loaded candidate (or the claimed spoke) and, unless ``dry_run``,
        claim the command id for it and count the placement."""
        keys = [claim_key(self._hub, issuer, command_id)]
        args: list[str | int] = [
            f"{issuer}:{command_id}",
            max(1, int(claim_ttl_s * 1000)),
            "1" if dry_run else "0",
            self.KEEP_MS,
        ]
        for c in candidates:
            keys.append(placed_key(self._hub, c.spoke))
            args += [c.spoke, c.base, c.capacity, c.observed_ms]
        try:
            async with asyncio.timeout(self._timeout):
                out = await self._place(keys=keys, args=args)
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
        spoke, already, *placed = out
        return Claimed(_text(spoke), bool(int(already)), tuple(int(p) for p in placed))


def _text(value: object) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
