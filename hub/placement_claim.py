"""Score candidates, claim the command id for the chosen spoke and count the placement, so
several hubs on one Redis (or one Redis Cluster) never place one command twice.

Keys (no hash tags: each script touches one key, so they spread over a cluster's nodes)::

    federation:hub:{hub}:claim:{issuer}:{command_id}   the spoke a command was placed on;
                                                       SET NX, TTL the claim TTL
    federation:hub:{hub}:placed:{spoke}                sorted set: placements (score: Redis
                                                       time in ms), kept ``keep_ms``

Score of a candidate: (running + queued at its last status + placements since that status)
/ capacity; the lowest wins, ties to the first in the order given (the caller shuffles, so
ties break at random). A command id already claimed goes to its claimed spoke whatever the
candidates. A dry run reads the same numbers and writes nothing.

Steps, each on one key (one hash slot), in this order:

1. read the claim and every candidate's placement count (one pipeline, reads only);
2. count the placement on the chosen spoke (a member unique to this attempt);
3. claim the command id with ``SET NX``; if another hub claimed it meanwhile, take back the
   count of step 2 and follow the holder.

Only step 3 decides where a command goes, and it is one atomic ``SET NX`` on one key, so a
command is placed once however the steps of several hubs interleave. The counts are a load
hint: counting before claiming means a concurrent placement sees this one as early as
possible; a hub that dies between steps 2 and 3 leaves one count too many, which stops
counting at the spoke's next status (placements before it are in its numbers) or after
``KEEP_MS``. Two hubs may read the same counts and choose the same spoke (one script over
every candidate's set would serialise them, but cannot run on a cluster): a skew of at most
the placements in flight, corrected by the counts of step 2 and the next status.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from hubspoke import errors

from .placement import Candidate

__all__ = ["ClaimStore", "Claimed", "claim_key", "placed_key"]

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

# KEYS[1] a spoke's placed set. ARGV: member, keep ms. Counts one placement at Redis time.
_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return now
"""

# KEYS[1] the claim. ARGV: spoke, ttl ms. Returns {holder, 1 if this call took it}.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return {ARGV[1], 1} end
return {redis.call('GET', KEYS[1]), 0}
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
        self._count = client.register_script(_COUNT)
        self._claim = client.register_script(_CLAIM)

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
        count the placement and claim the command id for it (see the module docs)."""
        claim = claim_key(self._hub, issuer, command_id)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.get(claim)
                    for c in candidates:
                        pipe.zcount(placed_key(self._hub, c.spoke), f"({c.observed_ms}", "+inf")
                    found, *counts = await pipe.execute()
                if found:
                    return Claimed(_text(found), True)
                placed = tuple(int(n) for n in counts)
                best = _least_loaded(candidates, placed)
                if best is None:
                    return Claimed("", False)
                spoke = candidates[best].spoke
                if dry_run:
                    return Claimed(spoke, False, placed)
                member = f"{issuer}:{command_id}:{secrets.token_hex(4)}"
                counted = placed_key(self._hub, spoke)
                await self._count(keys=[counted], args=[member, self.KEEP_MS])
                holder, took = await self._claim(
                    keys=[claim], args=[spoke, max(1, int(claim_ttl_s * 1000))]
                )
                if not int(took):  # another hub claimed it between our read and our SET
                    await self._redis.zrem(counted, member)
                    return Claimed(_text(holder), True)
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
        return Claimed(spoke, False, placed)


def _least_loaded(candidates: Sequence[Candidate], placed: Sequence[int]) -> int | None:
    """The index of the lowest (base + placed) / capacity; ties to the first."""
    best: int | None = None
    best_score = 0.0
    for i, (c, n) in enumerate(zip(candidates, placed, strict=True)):
        score = (c.base + n) / c.capacity if c.capacity > 0 else math.inf
        if best is None or score < best_score:
            best, best_score = i, score
    return best


def _text(value: object) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
