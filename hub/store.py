"""The hub's state in Redis: seen nonces and the agent index. All hub keys are built here.

Keys (each has a TTL; the hub holds no state outside Redis; ``H`` the hub, ``P`` a
principal; braces are Redis Cluster hash tags)::

    federation:hub:{H:p:P}:nonce:<nonce hex>      "1", until the command expires + skew
    federation:hub:{H:p:P}:rate                   hash: P's token bucket (shared/admission.py)
    federation:hub:H:schema                       the schema version (no TTL; see below)
    federation:hub:H:agent-at:<agent_id>          hash: spoke name → expiry (epoch ms)
    federation:hub:H:agent:<agent_id>             old layout, read only (see below)
    federation:hub:H:nonce:P:<nonce hex>          schema 1 layout, read only (see below)

Admission touches a principal's bucket and nonce in one script, so both carry the tag
``{H:p:P}``: on a Redis Cluster (``redis+cluster://``, ``hubspoke.redis_access``) they share
a slot, and different principals spread over the nodes. The agent index keys have no tag
(each is used alone), so they spread by their whole name.

The agent index is keyed by spoke and id: the same id spawned on two spokes is two entries,
and recording one never overwrites the other. Each entry lives ``agent_index_ttl``; the
hash as a whole lives as long as its newest entry, and expired fields are dropped when read.

Migration: hubs before the keyed index wrote one string per id (the spoke of the newest
spawn). Those keys are never written again but are still read, as one more entry, until
their own TTL (at most one ``agent_index_ttl``) removes them; nothing is migrated at start-up.

Schema: ``ensure_schema`` runs at start-up (``hubspoke.schema``): a Redis written by a newer
hub is refused, an older one migrated. Version 2 (per-principal tags) moves nothing: a
nonce claimed under its schema 1 name is still checked (never written) on every admission
on one Redis, so no nonce is forgotten early during an upgrade, even with schema 1 hubds
still serving beside new ones; those keys expire within one command window. Rate buckets
start full under their new names (at most one extra burst per principal, once). A cluster
never held schema 1 keys (those hubs had no cluster client), so the check is skipped there.
Version 3 moves the outbox from one hash tag per hub to one per shard of spokes
(hub/outbox_keys.py), at start-up, on one Redis or a cluster.

Redis failures surface as ``hubspoke.errors.BackendUnavailableError`` (UNAVAILABLE), so a
client may retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions

from hubspoke import errors
from hubspoke.admission import ADMIT_SCRIPT, Admission, NonceClaim, RateLimit
from hubspoke.redis_access import RedisAccess, access, open_client
from hubspoke.redis_mux import RedisMux, ScriptRef
from hubspoke.schema import Migration, SchemaState, ensure_schema
from hubspoke.version import HUB_SCHEMA_VERSION

from .mux_pipe import MuxPipe
from .outbox_keys import move_from_hub_tag

__all__ = [
    "Admit",
    "HubStore",
    "agent_index_key",
    "agent_key",
    "legacy_nonce_key",
    "nonce_key",
    "parse_found",
    "principal_tag",
    "rate_key",
    "redis_guard",
    "schema_key",
]


class Admit(Protocol):
    """Admit a command of ``(principal, nonce, expires)``: a rate token, then its nonce;
    with ``queue``, the reads it adds to a pipeline go in the same round trip, and their
    replies are returned (hub/prefetch.py); without, an empty list."""

    def __call__(
        self,
        principal: str,
        nonce: bytes,
        expires: dt.datetime,
        queue: Callable[[Any], object] | None = None,
    ) -> Awaitable[list[Any]]: ...


_SCHEMA_SCAN_PAGES = 20


async def _unversioned_to_1(client: redis.asyncio.Redis) -> None:
    """Version 1 is the unversioned layout plus the schema key: nothing to move."""


async def _per_principal_tags_2(client: redis.asyncio.Redis) -> None:
    """Version 2 tags nonce and rate keys per principal; the old nonce keys are read until
    they expire (:func:`legacy_nonce_key`), nothing is moved."""


def _migrations(hub: str) -> dict[int, Migration]:
    """Schema steps ``n -> n+1`` by ``n`` (0: before the key existed)."""

    async def outbox_shards_3(client: redis.asyncio.Redis) -> None:
        """Version 3 spreads the outbox over shards of spokes (hub/outbox_keys.py)."""
        await move_from_hub_tag(client, hub)

    return {0: _unversioned_to_1, 1: _per_principal_tags_2, 2: outbox_shards_3}


_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def principal_tag(hub: str, principal: str) -> str:
    """The hash tag of one principal's admission keys (bucket and nonces)."""
    return f"{{{hub}:p:{principal}}}"


def nonce_key(hub: str, issuer: str, nonce: bytes) -> str:
    """A claimed nonce of ``issuer`` (same slot as its rate bucket)."""
    return f"federation:hub:{principal_tag(hub, issuer)}:nonce:{nonce.hex()}"


def legacy_nonce_key(hub: str, issuer: str, nonce: bytes) -> str:
    """The schema 1 name of a claimed nonce: checked on one Redis, never written."""
    return f"federation:hub:{hub}:nonce:{issuer}:{nonce.hex()}"


def schema_key(hub: str) -> str:
    """The schema version of this hub's data (``hubspoke.version.HUB_SCHEMA_VERSION``)."""
    return f"federation:hub:{hub}:schema"


def rate_key(hub: str, principal: str) -> str:
    """``principal``'s token bucket (same slot as its nonces)."""
    return f"federation:hub:{principal_tag(hub, principal)}:rate"


def agent_key(hub: str, agent_id: str) -> str:
    """The old, single-spoke index entry of ``agent_id``: read for migration, never written."""
    return f"federation:hub:{hub}:agent:{agent_id}"


def agent_index_key(hub: str, agent_id: str) -> str:
    """The hash of every spoke ``agent_id`` was routed to (field: spoke, value: expiry ms)."""
    return f"federation:hub:{hub}:agent-at:{agent_id}"


# KEYS[1] the agent's index hash; ARGV: spoke, ttl ms. Sets the spoke's expiry and keeps the
# hash alive as long as its newest entry (PEXPIRE ... GT needs Redis 7; we support 6.2).
_REMEMBER = """
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], expires)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return expires
"""


@asynccontextmanager
async def redis_guard(timeout_s: float) -> AsyncIterator[None]:
    """One operation on the hub's Redis, within ``timeout_s``: Redis down or slow surfaces as
    ``BackendUnavailableError`` (UNAVAILABLE, safe to retry). Every hub store uses it."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except (*_REDIS_DOWN, TimeoutError) as exc:
        raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc


class HubStore:
    """Nonce claims and the agent → spoke index over one Redis client (which it owns).
    ``cluster``: the client is a ``RedisCluster`` (``hubspoke.redis_access.open_client``)."""

    def __init__(
        self, client: redis.asyncio.Redis, hub: str, timeout_s: float, *, cluster: bool = False
    ) -> None:
        self._redis = client
        self._hub = hub
        self._timeout = timeout_s
        self._cluster = cluster
        self._closed = False
        self._remember = client.register_script(_REMEMBER)
        self._mux = None if cluster else RedisMux.of(client, timeout_s)
        """The hot path's pipelined connection (hub/mux_pipe.py); none on a cluster."""

    @property
    def client(self) -> redis.asyncio.Redis:
        """The store's Redis client (text responses), for the hub's other keys (audit log)."""
        return self._redis

    @classmethod
    def from_url(cls, url: str | RedisAccess, hub: str, timeout_s: float) -> HubStore:
        """A store on its own client; ``url`` is the hub's Redis access (user, password
        file, TLS) or a bare URL. Raises ``RedisAccessError`` for an unusable password file."""
        target = access(url)
        return cls(open_client(target, timeout_s), hub, timeout_s, cluster=target.cluster)

    @property
    def cluster(self) -> bool:
        """Whether the hub's Redis is a Redis Cluster."""
        return self._cluster

    @property
    def timeout_s(self) -> float:
        """The deadline of each Redis operation."""
        return self._timeout

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_guard(self._timeout)

    def admission(self, limit: RateLimit, max_skew: dt.timedelta) -> Admit:
        """Take a rate token for the principal and claim the command's nonce (kept until
        the command can no longer be accepted), in one round trip.

        The callable raises RateLimitedError, NonceReusedError or BackendUnavailableError.
        """
        admission = Admission(self._redis, limit)
        script = ScriptRef.of(self._redis.register_script(ADMIT_SCRIPT))

        async def admit(
            principal: str,
            nonce: bytes,
            expires: dt.datetime,
            queue: Callable[[Any], object] | None = None,
        ) -> list[Any]:
            claim = NonceClaim.until_expired(
                nonce_key(self._hub, principal, nonce), expires, max_skew
            )
            seen = () if self._cluster else (legacy_nonce_key(self._hub, principal, nonce),)
            rate = rate_key(self._hub, principal)
            async with self._guard():
                if queue is None:
                    await admission.admit(principal, rate, [claim], seen)
                    return []
                if self._mux is None:
                    return await admission.admit_then(principal, rate, [claim], seen, queue)
                pipe = MuxPipe()  # on the shared pipelined connection (hub/mux_pipe.py)
                queue(pipe)
                keys, args = admission.call(rate, [claim], seen)
                try:
                    first, *rest = await self._mux.script(script, keys, args, *pipe.commands)
                except redis.exceptions.RedisError as exc:
                    raise errors.BackendUnavailableError("the hub's Redis is unavailable") from exc
                if isinstance(first, Exception):
                    raise errors.BackendUnavailableError("the hub's Redis is unavailable")
                admission.refuse(principal, int(first[0]), first[1])
                return pipe.replies(rest)

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
        """Record that ``spoke`` holds ``agent_id``, beside any other spoke holding that id."""
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self._guard():
            await self._remember(keys=[agent_index_key(self._hub, agent_id)], args=[spoke, ttl_ms])

    def queue_remember(self, pipe: Any, agent_id: str, spoke: str, ttl_s: float) -> None:
        """Add :meth:`remember_agent`'s script to ``pipe`` as one EVALSHA (a NOSCRIPT reply
        means: call :meth:`remember_agent`, which loads it): hub/call_writes.py."""
        ttl_ms = max(1, int(ttl_s * 1000))
        key = agent_index_key(self._hub, agent_id)
        pipe.execute_command("EVALSHA", self._remember.sha, 1, key, spoke, ttl_ms)

    async def find_agent(self, agent_id: str) -> tuple[str, ...]:
        """Every spoke the hub routed ``agent_id`` to and still indexes, sorted by name."""
        entries: dict[Any, Any]
        legacy: object
        if self._cluster:  # no old layout on a cluster; TIME cannot be pipelined there
            async with self._guard():
                entries = await self._redis.hgetall(agent_index_key(self._hub, agent_id))
                secs, micros = await self._redis.time()
            legacy = None
        else:
            async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
                self.queue_find(pipe, agent_id)
                return parse_found(await pipe.execute())
        return parse_found([entries, legacy, (secs, micros)])

    def queue_find(self, pipe: Any, agent_id: str) -> None:
        """Add :meth:`find_agent`'s reads to ``pipe`` (one Redis, not a cluster: three
        replies, for :func:`parse_found`); hub/prefetch.py reads them with the admission."""
        pipe.hgetall(agent_index_key(self._hub, agent_id))
        pipe.get(agent_key(self._hub, agent_id))
        pipe.time()

    async def ensure_schema(self) -> SchemaState:
        """Check, migrate or create this hub's schema version key (``hubspoke.schema``).

        Raises:
            hubspoke.version.SchemaVersionError: the Redis holds a newer schema.
            hubspoke.errors.BackendUnavailableError: Redis does not answer.
        """

        async def has_data() -> bool:
            # Everything the hub keeps expires, and no key is always there: look at a
            # bounded number of SCAN pages; past them, assume data (migrating is then safe).
            # On a cluster there is no data before the schema key (see the module docs).
            if self._cluster:
                return False
            cursor, pattern = 0, f"federation:hub:{self._hub}:*"
            for _ in range(_SCHEMA_SCAN_PAGES):
                cursor, found = await self._redis.scan(cursor, match=pattern, count=1000)
                if found:
                    return True
                if cursor == 0:
                    return False
            return True

        async with self._guard():
            return await ensure_schema(
                self._redis,
                schema_key(self._hub),
                HUB_SCHEMA_VERSION,
                _migrations(self._hub),
                owner=f"hub {self._hub}",
                has_data=has_data,
            )

    @property
    def mux(self) -> RedisMux | None:
        """The hot path's pipelined connection (None on a cluster)."""
        return self._mux

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._mux is not None:
                await self._mux.close()
            await self._redis.aclose()


def parse_found(replies: Sequence[Any]) -> tuple[str, ...]:
    """The spokes an agent is indexed on, from the replies ``HubStore.queue_find`` asked
    for: entries not yet expired by Redis's clock, and an old-layout entry."""
    entries, legacy, (secs, micros) = replies
    now_ms = int(secs) * 1000 + int(micros) // 1000
    spokes = {str(s) for s, until in entries.items() if _int(str(until)) > now_ms}
    if isinstance(legacy, str) and legacy:
        spokes.add(legacy)
    return tuple(sorted(spokes))


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
