"""Enrolled spokes and enrolment tokens in the hub's Redis. All their keys are built here.

Keys (``H`` is the hub's name, ``S`` a spoke's; braces are Redis Cluster hash tags)::

    federation:hub:{H}:members             hash: spoke name → revision that recorded it
    federation:hub:{H}:members:revision    counter: grows with every enrolment and removal
    federation:hub:H:member:{S}            a member's record (proto-JSON of Member)
    federation:hub:H:enrol-token:{T}       hash: an enrolment token's record, T = SHA-256 hex
                                           of its secret (the secret itself is never stored)

The index and the revision share one hash tag, so one MULTI changes both; each member's
record and each token sit in their own slot. A member is written before the index names it
and dropped from the index (with the revision bumped) before its record is deleted, so a
reader that sees a name always finds its record, and a removal is visible to every hub
the moment the revision moves.

Tokens: a token record keeps the operator's name, labels, address and mode, and its expiry
(epoch ms). Using one marks it used in one Lua script (single use even with many hubs); the
record itself lives ``TOKEN_KEEP_S`` past its expiry, so a late or second use is answered
"expired" or "already used" rather than "unknown".

Redis failures surface as ``hubspoke.errors.BackendUnavailableError`` (UNAVAILABLE).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import redis.asyncio
from google.protobuf import json_format

from hubspoke.gen.federation.v1 import enrol_pb2
from hubspoke.redis_access import RedisAccess, access, open_client

from .store import redis_guard

__all__ = [
    "TOKEN_KEEP_S",
    "MembershipStore",
    "TokenRecord",
    "TokenState",
    "index_key",
    "member_key",
    "revision_key",
    "token_key",
]

TOKEN_KEEP_S: Final = 86400
"""Seconds a token's record outlives its expiry, to answer a late use clearly."""


def index_key(hub: str) -> str:
    """The membership index: spoke name → the revision that recorded it."""
    return f"federation:hub:{{{hub}}}:members"


def revision_key(hub: str) -> str:
    """The membership revision (same hash tag as the index)."""
    return f"federation:hub:{{{hub}}}:members:revision"


def member_key(hub: str, spoke: str) -> str:
    """One member's record (its own hash tag: the spoke's name)."""
    return f"federation:hub:{hub}:member:{{{spoke}}}"


def token_key(hub: str, token_hash: str) -> str:
    """One enrolment token's record, by the SHA-256 hex of its secret."""
    return f"federation:hub:{hub}:enrol-token:{{{token_hash}}}"


class TokenState(StrEnum):
    """What using a token found."""

    OK = "ok"
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """The operator's side of an enrolment, as the token's record keeps it."""

    name: str
    labels: Mapping[str, str]
    address: str
    connect: bool
    expire_ms: int


# KEYS[1] the token's record. Marks it used and returns its fields, or a refusal; one script,
# so two hubs racing for one token give it to exactly one.
_CONSUME = """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return {'unknown'} end
local f = {}
for i = 1, #rec, 2 do f[rec[i]] = rec[i + 1] end
if f['used'] == '1' then return {'used'} end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
if now_ms >= tonumber(f['expire_ms']) then return {'expired'} end
redis.call('HSET', KEYS[1], 'used', '1')
return {'ok', f['name'], f['labels'], f['address'], f['connect'], f['expire_ms']}
"""

# KEYS[1] the token's record; ARGV: name, labels JSON, address, connect, ttl ms, keep ms.
# Returns the expiry (epoch ms, the server's clock).
_CREATE = """
local now = redis.call('TIME')
local expire = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'labels', ARGV[2], 'address', ARGV[3],
  'connect', ARGV[4], 'expire_ms', expire, 'used', '0')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]) + tonumber(ARGV[6]))
return expire
"""

# KEYS[1] the revision, KEYS[2] the index (one hash tag); ARGV[1] the member's name.
_INDEX = """
local revision = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], revision)
return revision
"""


class MembershipStore:
    """Members and tokens over one Redis client (which it owns)."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, timeout_s: float) -> None:
        self._redis = client
        self._hub = hub
        self._timeout = timeout_s
        self._closed = False
        self._consume = client.register_script(_CONSUME)
        self._create = client.register_script(_CREATE)
        self._index = client.register_script(_INDEX)

    @classmethod
    def from_url(cls, url: str | RedisAccess, hub: str, timeout_s: float) -> MembershipStore:
        """A store on its own client, as ``HubStore.from_url`` builds one."""
        return cls(open_client(access(url), timeout_s), hub, timeout_s)

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_guard(self._timeout)

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(self, token_hash: str, record: TokenRecord, ttl_ms: int) -> int:
        """Store a token's record; return its expiry (epoch ms)."""
        async with self._guard():
            expire = await self._create(
                keys=[token_key(self._hub, token_hash)],
                args=[
                    record.name,
                    json.dumps(dict(record.labels), sort_keys=True),
                    record.address,
                    "1" if record.connect else "0",
                    max(1, ttl_ms),
                    TOKEN_KEEP_S * 1000,
                ],
            )
        return int(expire)

    async def peek_token(self, token_hash: str) -> TokenState:
        """What using the token would find now, without using it (a hint: only
        :meth:`consume_token` decides)."""
        async with self._guard():
            found = await self._redis.hmget(token_key(self._hub, token_hash), "used", "expire_ms")
            now_s, now_us = await self._redis.time()
        used, expire = found
        if expire is None:
            return TokenState.UNKNOWN
        if used == "1":
            return TokenState.USED
        if int(now_s) * 1000 + int(now_us) // 1000 >= int(expire):
            return TokenState.EXPIRED
        return TokenState.OK

    async def consume_token(self, token_hash: str) -> tuple[TokenState, TokenRecord | None]:
        """Use a token once: its record, or why it cannot be used."""
        async with self._guard():
            found = await self._consume(keys=[token_key(self._hub, token_hash)])
        state = TokenState(found[0])
        if state is not TokenState.OK:
            return state, None
        name, labels, address, connect, expire = found[1:6]
        return state, TokenRecord(
            name=name,
            labels=json.loads(labels),
            address=address,
            connect=connect == "1",
            expire_ms=int(expire),
        )

    # -- members --------------------------------------------------------------------------

    async def add(self, member: enrol_pb2.Member) -> int:
        """Record (or replace) a member; return the new revision."""
        text = json_format.MessageToJson(member, preserving_proto_field_name=True, indent=None)
        async with self._guard():
            await self._redis.set(member_key(self._hub, member.name), text)
            revision = await self._index(
                keys=[revision_key(self._hub), index_key(self._hub)], args=[member.name]
            )
        return int(revision)

    async def remove(self, name: str) -> int | None:
        """Drop a member: the new revision, or None if it was not a member."""
        async with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(index_key(self._hub), name)
                pipe.incr(revision_key(self._hub))
                removed, revision = await pipe.execute()
            await self._redis.delete(member_key(self._hub, name))
        return int(revision) if removed else None

    async def revision(self) -> int:
        """The membership revision now (0: nothing was ever enrolled)."""
        async with self._guard():
            value = await self._redis.get(revision_key(self._hub))
        return int(value or 0)

    async def load(self) -> tuple[int, list[enrol_pb2.Member]]:
        """The revision, then every member it names (sorted by name)."""
        async with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(revision_key(self._hub))
                pipe.hgetall(index_key(self._hub))
                revision, index = await pipe.execute()
            names = sorted(index)
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.get(member_key(self._hub, name))
                texts = await pipe.execute() if names else []
        members: list[enrol_pb2.Member] = []
        for name, text in zip(names, texts, strict=True):
            if not text:
                continue  # removed between the two reads: the next revision says so
            member = json_format.Parse(text, enrol_pb2.Member(), ignore_unknown_fields=True)
            member.revision = int(index[name] or 0)
            members.append(member)
        return int(revision or 0), members

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._redis.aclose()
