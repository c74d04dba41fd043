"""Operator drains, kept in the hub's Redis so every hub on it sees them and they outlive
restarts.

Key (no TTL: a drain lasts until an operator lifts it)::

    federation:hub:{hub}:drained    hash: spoke name -> "<epoch ms> <principal>"

A drained spoke gets no new placements: a selector spawn never picks it and a spawn that
names it is refused with FAILED_PRECONDITION, reason SPOKE_DRAINING (:class:`SpokeDrainingError`).
Everything else (status, kill, list, watch, queue verbs) still reaches it. Redis failures
surface as ``BackendUnavailableError`` (UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import redis.asyncio
import redis.exceptions

from hubspoke import errors

__all__ = ["DrainStore", "SpokeDrainingError", "drained_key", "parse_drained"]

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class SpokeDrainingError(errors.CommandError):
    """A spawn names a spoke an operator drains."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "SPOKE_DRAINING"


def drained_key(hub: str) -> str:
    """The hash of drained spokes (field: spoke, value: "<epoch ms> <principal>")."""
    return f"federation:hub:{hub}:drained"


class DrainStore:
    """Reads and writes the drained-spokes hash over the hub's Redis client (not owned)."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, timeout_s: float) -> None:
        self._redis = client
        self._key = drained_key(hub)
        self._timeout = timeout_s

    async def set(self, spoke: str, draining: bool, principal: str) -> None:
        """Drain ``spoke`` (recording who and when) or lift its drain; idempotent."""
        try:
            async with asyncio.timeout(self._timeout):
                if draining:
                    secs, micros = await self._redis.time()
                    at_ms = int(secs) * 1000 + int(micros) // 1000
                    await self._redis.hset(self._key, spoke, f"{at_ms} {principal}")
                else:
                    await self._redis.hdel(self._key, spoke)
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc

    async def drained(self) -> Mapping[str, str]:
        """Every drained spoke → "<epoch ms> <principal>"."""
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._redis.hgetall(self._key)
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
        return parse_drained(found)

    async def check(self, spoke: str, drained: Mapping[str, str] | None = None) -> None:
        """Raise ``SpokeDrainingError`` if ``spoke`` is drained; ``drained``: the hash as
        already read (hub/prefetch.py), else it is read now."""
        if spoke in (await self.drained() if drained is None else drained):
            raise SpokeDrainingError(
                f"spoke {spoke} is draining: it takes no new agents "
                f"(hubctl spoke undrain {spoke} lifts it)",
                spoke=spoke,
            )


def parse_drained(found: object) -> dict[str, str]:
    """The drained-spokes hash as read (HGETALL): spoke -> "<epoch ms> <principal>"."""
    if not isinstance(found, dict):
        return {}
    return {_text(k): _text(v) for k, v in found.items()}


def _text(value: object) -> str:
    """A Redis reply as text, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)
