"""Which hubd holds a connect-mode spoke's session, and which hellos were used: in the hub's Redis.

Several hubds serve one hub on one Redis (docs/protocol.md "Several hubds"). A connect-mode
spoke keeps its control session with one of them, the *holder*, which takes a lease on the
spoke here; another hubd reads the lease to forward a call to the holder
(hub/forward_stub.py) and to show the spoke READY "via" the holder (hub/forward_watch.py).

Keys (one hash tag per spoke, so a Redis Cluster spreads them; one key per operation)::

    federation:hub:{<hub>:s:<spoke>}:lease              JSON lease, TTL lease_ttl_s
    federation:hub:{<hub>:s:<spoke>}:hello:<nonce hex>  "1", TTL twice the clock skew

A lease is JSON ``{"holder": forward address, "session": id, "at": epoch s, "nonce": hex,
"status": base64, "stale_after_s": s}``: ``nonce`` is the session nonce the spoke's
heartbeats are bound to and ``status`` its last signed status (a serialized SignedEnvelope),
so a reader verifies the spoke's own signature instead of trusting Redis for its health;
``stale_after_s`` (heartbeat interval x missed heartbeats) tells a reader when a lease that
was not renewed means a dead holder, before its TTL ends. The holder takes the lease
when a session opens (over whatever lease was there: the spoke chose this hubd, so an older
holder's session is dead or about to be replaced), renews it with each heartbeat, and
releases it when the session ends; renewal and release touch the lease only while it still
names the holder's session, so a hubd whose session was taken over never removes its
successor's lease. A holder that dies leaves its lease to expire after its TTL.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio
import redis.exceptions

from hubspoke import errors

__all__ = ["Lease", "LeaseStore", "hello_key", "lease_key"]

_RENEW: Final = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['session'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
"""Write the lease only if it is absent or still this session's (a takeover wins)."""
_RELEASE: Final = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['session'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def lease_key(hub: str, spoke: str) -> str:
    return f"federation:hub:{{{hub}:s:{spoke}}}:lease"


def hello_key(hub: str, spoke: str, nonce: bytes) -> str:
    return f"federation:hub:{{{hub}:s:{spoke}}}:hello:{nonce.hex()}"


@dataclass(frozen=True, slots=True)
class Lease:
    """A connect-mode spoke's session as its holder last wrote it."""

    spoke: str
    holder: str
    """The holder's forward address (``link_forward_address``)."""
    session: str
    at: float
    """When the holder last renewed it (epoch seconds: a heartbeat's arrival)."""
    nonce: bytes = b""
    """The session nonce the spoke's heartbeats are bound to."""
    status: bytes = b""
    """The spoke's last signed status (a serialized SignedEnvelope), empty before one."""
    stale_after_s: float = 0.0
    """How long after ``at`` the holder itself would end a silent session (heartbeat
    interval x ``link_missed_heartbeats``); 0: unknown."""


class LeaseStore:
    """Leases on connect-mode spokes and used hello nonces, in the hub's Redis."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, ttl_s: float) -> None:
        self._client = client
        self._hub = hub
        self.ttl_s = ttl_s

    async def take(self, lease: Lease, ttl_s: float) -> None:
        """Hold ``lease.spoke`` for ``ttl_s`` (over any lease there)."""
        await self._call(
            self._client.set(lease_key(self._hub, lease.spoke), _encode(lease), px=_ms(ttl_s))
        )

    async def renew(self, lease: Lease, ttl_s: float) -> bool:
        """Write ``lease`` again for ``ttl_s`` unless another session took it over."""
        key = lease_key(self._hub, lease.spoke)
        done = await self._call(
            self._client.eval(_RENEW, 1, key, lease.session, _encode(lease), _ms(ttl_s))
        )
        return bool(done)

    async def release(self, spoke: str, session: str) -> None:
        """Drop ``spoke``'s lease if it still names ``session``."""
        key = lease_key(self._hub, spoke)
        await self._call(self._client.eval(_RELEASE, 1, key, session))

    async def get(self, spoke: str) -> Lease | None:
        """``spoke``'s lease, or None (no hubd holds its session)."""
        raw = await self._call(self._client.get(lease_key(self._hub, spoke)))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return Lease(
                spoke=spoke,
                holder=str(data["holder"]),
                session=str(data["session"]),
                at=float(data["at"]),
                nonce=bytes.fromhex(data.get("nonce", "")),
                status=base64.b64decode(data.get("status", "")),
                stale_after_s=float(data.get("stale_after_s", 0.0)),
            )
        except (ValueError, KeyError, TypeError):
            return None  # not a lease this code wrote: nobody to forward to

    async def claim_hello(self, spoke: str, nonce: bytes, keep_s: float) -> None:
        """Accept a hello's nonce once across every hubd of the hub, for ``keep_s``.

        Raises:
            hubspoke.errors.NonceReusedError: a hubd saw it before.
            hubspoke.errors.BackendUnavailableError: Redis does not answer.
        """
        key = hello_key(self._hub, spoke, nonce)
        if not await self._call(self._client.set(key, "1", px=_ms(keep_s), nx=True)):
            raise errors.NonceReusedError("this hello was already used")

    async def _call(self, op: Any) -> Any:
        try:
            return await op
        except redis.exceptions.RedisError as exc:  # down, timed out, a cluster moving slots
            raise errors.BackendUnavailableError(f"the hub's Redis failed: {exc}") from exc


def new_lease(
    spoke: str, holder: str, session: str, nonce: bytes, status: bytes = b"", stale_s: float = 0.0
) -> Lease:
    return Lease(spoke, holder, session, time.time(), nonce, status, stale_s)


def _encode(lease: Lease) -> str:
    return json.dumps(
        {
            "holder": lease.holder,
            "session": lease.session,
            "at": lease.at,
            "nonce": lease.nonce.hex(),
            "status": base64.b64encode(lease.status).decode("ascii"),
            "stale_after_s": lease.stale_after_s,
        }
    )


def _ms(seconds: float) -> int:
    return max(round(seconds * 1000), 1)
