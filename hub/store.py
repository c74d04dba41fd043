"""The hub's state in Redis: seen nonces and the agent index. All hub keys are built here.

Keys (each has a TTL; the hub holds no state outside Redis)::

    federation:hub:{hub}:nonce:{issuer}:{nonce hex}   "1", until the command expires + skew
    federation:hub:{hub}:agent:{agent_id}             the spoke name, for agent_index_ttl

Redis failures surface as ``hubspoke.errors.BackendUnavailableError`` (UNAVAILABLE), so a
client may retry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import redis.asyncio
import redis.exceptions

from hubspoke import errors
from hubspoke.admission import Admission, NonceClaim, RateLimit

__all__ = ["Admit", "HubStore", "agent_key", "nonce_key", "rate_key"]

Admit = Callable[[str, bytes, dt.datetime], Awaitable[None]]
"""Admit a command of ``(principal, nonce, expires)``: a rate token, then its nonce."""

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def nonce_key(hub: str, issuer: str, nonce: bytes) -> str:
    return f"federation:hub:{hub}:nonce:{issuer}:{nonce.hex()}"


def rate_key(hub: str, principal: str) -> str:
    return f"federation:hub:{hub}:rate:{principal}"


def agent_key(hub: str, agent_id: str) -> str:
    return f"federation:hub:{hub}:agent:{agent_id}"


class HubStore:
    """Nonce claims and the agent → spoke index over one Redis client (which it owns)."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, timeout_s: float) -> None:
        self._redis = client
        self._hub = hub
        self._timeout = timeout_s
        self._closed = False

    @classmethod
    def from_url(cls, url: str, hub: str, timeout_s: float) -> HubStore:
        client = redis.asyncio.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        return cls(client, hub, timeout_s)

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (*_REDIS_DOWN, TimeoutError) as exc:
            raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc

    def admission(self, limit: RateLimit, max_skew: dt.timedelta) -> Admit:
        """Take a rate token for the principal and claim the command's nonce (kept until
        the command can no longer be accepted), in one round trip.

        The callable raises RateLimitedError, NonceReusedError or BackendUnavailableError.
        """
        admission = Admission(self._redis, limit)

        async def admit(principal: str, nonce: bytes, expires: dt.datetime) -> None:
            claim = NonceClaim.until_expired(
                nonce_key(self._hub, principal, nonce), expires, max_skew
            )
            async with self._guard():
                await admission.admit(principal, rate_key(self._hub, principal), [claim])

        return admit

    async def ping(self) -> bool:
        """True if Redis answers now."""
        try:
            async with self._guard():
                await self._redis.ping()
        except errors.BackendUnavailableError:
            return False
        return True

    async def remember_agent(self, agent_id: str, spoke: str, ttl_s: float) -> None:
        async with self._guard():
            await self._redis.set(
                agent_key(self._hub, agent_id), spoke, px=max(1, int(ttl_s * 1000))
            )

    async def find_agent(self, agent_id: str) -> str | None:
        """The spoke that ran ``agent_id`` if the hub routed its spawn, else None."""
        async with self._guard():
            found = await self._redis.get(agent_key(self._hub, agent_id))
        return found if isinstance(found, str) else None

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._redis.aclose()
