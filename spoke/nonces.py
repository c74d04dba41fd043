"""Replay protection: each (issuer, nonce) is accepted once while its command is valid."""

from __future__ import annotations

import datetime as dt

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import commands, errors

from .keys import SpokeKeys


class NonceStore:
    """Nonces live in Redis with a TTL covering the command's validity plus the clock skew,
    so they survive a spoke restart and are shared by every spoked on the same Redis."""

    def __init__(self, redis: aioredis.Redis, keys: SpokeKeys, max_skew: dt.timedelta) -> None:
        self._redis = redis
        self._keys = keys
        self._skew = max_skew

    async def claim(self, issuer: str, nonce: bytes, expires: dt.datetime) -> None:
        """Record the nonce; raise NonceReusedError if it was seen."""
        ttl_ms = int((expires + self._skew - commands.now()).total_seconds() * 1000)
        try:
            fresh = await self._redis.set(
                self._keys.nonce(issuer, nonce.hex()), b"1", nx=True, px=max(ttl_ms, 1000)
            )
        except (RedisError, OSError) as exc:
            raise errors.BackendUnavailableError("redis unavailable") from exc
        if not fresh:
            raise errors.NonceReusedError("nonce already used: replayed command")
