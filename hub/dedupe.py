"""Dedupe keys at the hub, for selector spawns (docs/protocol.md §4.7): which spoke an
owner's dedupe key was placed on, so a second selector spawn with the key goes to the same
spoke, whose create script then answers with the agent still holding it (spoke/dedupe.py).

A spawn to a named spoke is deduplicated by that spoke alone. A selector spawn lets the hub
choose, and two spawns with one key could be placed on two spokes, each creating an agent;
the hub's claim closes that gap::

    federation:hub:{<hub>}:dedupe:<hex SHA-256 of owner 0x00 key>   "<spoke> <command id>"

taken with SET NX (``claim``) when the hub places a selector spawn with a key and no claim
exists, held for the claim TTL the placement uses (the spawn's start deadline, at least the
spoke's default ``start_within``), and read (``held``) before the hub screens its spokes:
a live claim names the spoke to relay to, whatever the load. The key is hashed, so neither a
principal's name nor the key can reach another Redis key; the braces are a Redis Cluster
hash tag (every key of one hub in one slot).

The helper for hub/placement_route.py (ROUTING), which calls it around its choice:
``held`` first; after choosing, ``claim`` (which answers the spoke that holds the key, the
chosen one unless another hub claimed first, in which case relay there instead).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from hubspoke import dedupe, errors
from hubspoke.gen.federation.v1 import command_pb2

__all__ = ["DedupeClaim", "DedupeClaims", "claim_key", "spawn_key"]

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

_CLAIM = """
-- KEYS[1] the claim. ARGV: "<spoke> <command id>", ttl ms. Take it if free; answer the holder.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""


def claim_key(hub: str, owner: str, key: str) -> str:
    """The Redis key of ``owner``'s claim on dedupe ``key`` at hub ``hub``."""
    digest = hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()
    return f"federation:hub:{{{hub}}}:dedupe:{digest}"


def spawn_key(body: command_pb2.SpawnAgentBody) -> str:
    """The spawn's dedupe key (its own, or derived from profile and task); "" for none.
    INVALID_ARGUMENT for a key outside the id alphabet, or both fields set."""
    return dedupe.resolve(body.dedupe_key, body.dedupe_from_task, body.profile, body.task)


@dataclass(frozen=True, slots=True)
class DedupeClaim:
    """Where a dedupe key was placed: the spoke, and the command that placed it there."""

    spoke: str
    command_id: str

    @classmethod
    def parse(cls, raw: bytes | str | None) -> DedupeClaim | None:
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        spoke, _, command_id = text.partition(" ")
        return cls(spoke, command_id)


class DedupeClaims:
    """Dedupe claims in the hub's Redis (a client this class does not own)."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, timeout_s: float) -> None:
        self._redis = client
        self._hub = hub
        self._timeout = timeout_s
        self._claim = client.register_script(_CLAIM)

    async def held(self, owner: str, key: str) -> DedupeClaim | None:
        """The live claim of ``owner`` on ``key``, if any."""
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(claim_key(self._hub, owner, key))
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
        return DedupeClaim.parse(raw)

    async def claim(
        self, owner: str, key: str, spoke: str, command_id: str, ttl_s: float
    ) -> DedupeClaim:
        """Claim ``key`` of ``owner`` for ``spoke`` for ``ttl_s`` unless it is claimed
        already; the claim that holds it now (this one, or the earlier one to relay to)."""
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._claim(
                    keys=[claim_key(self._hub, owner, key)],
                    args=[f"{spoke} {command_id}", max(1, int(ttl_s * 1000))],
                )
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
        found = DedupeClaim.parse(raw)
        return found if found is not None else DedupeClaim(spoke, command_id)
