"""The hub's outbox in Redis: commands held for spokes it could not reach, until delivered.

A spawn whose spoke is unreachable (circuit open, DISCONNECTED, or the relay found no one
answering) is held here with the client's envelope exactly as received and the hub's
acceptance time, and its agent answers PENDING_DELIVERY; a kill of an agent already on an
unreachable spoke is held too and delivered before anything else when the spoke is back.
``hub/outbox_delivery.py`` delivers; every delivery is a fresh relay carrying the acceptance
time, and the spoke's claim on the command id makes delivery exactly-once in effect.

Keys (``T`` = ``{<hub>:o<shard>}``, the hash tag of the spoke's shard, hub/outbox_keys.py:
each script touches one hash slot, and a Redis Cluster spreads the shards over its nodes)::

    federation:hub:T:outbox-due:<spoke>          zset: entry key -> next attempt (ms);
                                                 kills score -1e15 + time, first
    federation:hub:T:outbox:<spoke>:<kind>:<id>  hash: the entry (``Held``)
    federation:hub:T:outbox-age:<spoke>          zset: entry key -> acceptance (ms)
    federation:hub:T:outbox-deadline:<spoke>     zset: entry key -> deadline (ms)
    federation:hub:T:outbox-spokes               set: the shard's spokes with entries
    federation:hub:T:outbox-total                count of the shard's entries
    federation:hub:T:outbox-lease:<entry key>    the hubd delivering it, with a TTL
    federation:hub:T:outbox-done:<spoke>:<id>    hash: how an undelivered spawn ended
                                                 (EXPIRED/UNDELIVERED, KILLED), with a TTL

Bounds: ``max_per_spoke`` and ``max_total`` entries (RESOURCE_EXHAUSTED beyond; a retry of a
held command id finds its entry and adds nothing). The total is the sum of the shards'
counts, read before each hold (hub/outbox_keys.py says by how much concurrent holds may
pass it).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
import redis.asyncio

from hubspoke import errors
from hubspoke.redis_mux import RedisMux

from .mux_pipe import MuxPipe
from .outbox_keys import SHARDS, shard_base, shard_of
from .store import redis_guard

__all__ = ["Ended", "Held", "Lookup", "Outbox", "OutboxConfig", "OutboxFullError", "parse_lookup"]

SPAWN: Final = "spawn"
KILL: Final = "kill"
_KILL_FIRST = -(10**15)
"""Kills sort before every spawn in a spoke's due set (their score is this plus their time)."""

# KEYS: due zset, entry hash, spokes set, total, age zset, deadline zset. ARGV: spoke,
# entry key, score, max per spoke, max total, acceptance ms, deadline ms, then the entry's
# fields as name/value pairs.
# Returns 1 (held), 0 (already held: nothing added), -1 (the spoke's outbox is full),
# -2 (the hub's outbox is full).
_HOLD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[5]) then return -2 end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[7], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return 1
"""

# KEYS: due zset, entry hash, spokes set, total, done hash (or the entry again), lease,
# age zset, deadline zset.
# ARGV: spoke, entry key, done ttl ms (0: no done record), then done fields.
# Returns 1 if it removed the entry, 0 if it was already gone.
_FINISH = """
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[7], ARGV[2])
redis.call('ZREM', KEYS[8], ARGV[2])
redis.call('DEL', KEYS[6])
if redis.call('DECR', KEYS[4]) < 0 then redis.call('SET', KEYS[4], 0) end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
if tonumber(ARGV[3]) > 0 then
  local fields = {}
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[5], unpack(fields))
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
end
return 1
"""


class OutboxFullError(errors.CommandError):
    """The outbox for this spoke, or the hub's in all, is at its bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OUTBOX_FULL"


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """Bounds and timing of the outbox (hub config ``outbox_*``)."""

    hub_name: str
    max_per_spoke: int = 10_000
    max_total: int = 100_000
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    lease_s: float = 30.0
    done_ttl_s: float = 7 * 86400.0
    """How long how an undelivered spawn ended stays answerable (the agent index TTL)."""


@dataclass(frozen=True, slots=True)
class Held:
    """One held command."""

    spoke: str
    kind: str
    """``spawn`` or ``kill``."""
    command_id: str
    agent: str
    principal: str
    envelope: bytes
    """The client's SignedEnvelope, serialized exactly as received."""
    accepted_ms: int
    deadline_ms: int
    """A spawn's start deadline; a kill's, when it stops being worth delivering."""
    attempts: int = 0
    next_ms: int = 0
    last_error: str = ""
    profile: str = ""
    task: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.agent if self.kind == KILL else self.command_id}"

    def fields(self) -> dict[str, str]:
        return {
            "spoke": self.spoke,
            "kind": self.kind,
            "command_id": self.command_id,
            "agent": self.agent,
            "principal": self.principal,
            "envelope": base64.b64encode(self.envelope).decode(),
            "accepted_ms": str(self.accepted_ms),
            "deadline_ms": str(self.deadline_ms),
            "attempts": str(self.attempts),
            "next_ms": str(self.next_ms),
            "last_error": self.last_error,
            "profile": self.profile,
            "task": self.task,
        }

    @classmethod
    def parse(cls, raw: dict[str, str]) -> Held:
        return cls(
            spoke=raw["spoke"],
            kind=raw["kind"],
            command_id=raw["command_id"],
            agent=raw["agent"],
            principal=raw["principal"],
            envelope=base64.b64decode(raw["envelope"]),
            accepted_ms=int(raw["accepted_ms"]),
            deadline_ms=int(raw["deadline_ms"]),
            attempts=int(raw.get("attempts", "0")),
            next_ms=int(raw.get("next_ms", "0")),
            last_error=raw.get("last_error", ""),
            profile=raw.get("profile", ""),
            task=raw.get("task", ""),
        )


@dataclass(frozen=True, slots=True)
class Ended:
    """How a spawn that was never delivered ended (EXPIRED/UNDELIVERED or KILLED)."""

    spoke: str
    agent: str
    principal: str
    state: str
    """An ``Agent.State`` name without its prefix, e.g. ``EXPIRED``."""
    reason: str
    accepted_ms: int
    deadline_ms: int
    ended_ms: int
    profile: str = ""
    task: str = ""


class Outbox:
    """The hub's held commands (module docstring); Redis errors → BackendUnavailableError."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        cfg: OutboxConfig,
        timeout_s: float,
        mux: RedisMux | None = None,
    ) -> None:
        """``client`` must decode responses (text); the outbox does not own it. ``mux``: the
        hub's pipelined connection (hub/mux_pipe.py), for :meth:`lookup`."""
        self._redis = client
        self._mux = mux
        self._cfg = cfg
        self._timeout = timeout_s
        self._hold = client.register_script(_HOLD)
        self._finish = client.register_script(_FINISH)

    @property
    def config(self) -> OutboxConfig:
        return self._cfg

    def _base(self, spoke: str) -> str:
        return shard_base(self._cfg.hub_name, shard_of(spoke))

    def _spokes(self, spoke: str) -> str:
        """The set of spokes with entries, of ``spoke``'s shard."""
        return f"{self._base(spoke)}:outbox-spokes"

    def _total(self, spoke: str) -> str:
        """The count of entries of ``spoke``'s shard."""
        return f"{self._base(spoke)}:outbox-total"

    def _due(self, spoke: str) -> str:
        return f"{self._base(spoke)}:outbox-due:{spoke}"

    def _deadline(self, spoke: str) -> str:
        return f"{self._base(spoke)}:outbox-deadline:{spoke}"

    def _age(self, spoke: str) -> str:
        return f"{self._base(spoke)}:outbox-age:{spoke}"

    def _entry(self, spoke: str, key: str) -> str:
        return f"{self._base(spoke)}:outbox:{spoke}:{key}"

    def _done(self, spoke: str, agent: str) -> str:
        return f"{self._base(spoke)}:outbox-done:{spoke}:{agent}"

    def _lease(self, spoke: str, key: str) -> str:
        return f"{self._base(spoke)}:outbox-lease:{spoke}:{key}"

    def _shard_keys(self, name: str) -> list[str]:
        """``name`` (outbox-spokes or outbox-total) of every shard."""
        return [f"{shard_base(self._cfg.hub_name, n)}:{name}" for n in range(SHARDS)]

    async def hold(self, held: Held) -> bool:
        """Keep ``held``; False if that command was already held (nothing added).

        Raises OutboxFullError at a bound."""
        score = held.accepted_ms + (_KILL_FIRST if held.kind == KILL else 0)
        args: list[str | int] = [
            held.spoke,
            held.key,
            score,
            self._cfg.max_per_spoke,
            self._cfg.max_total,
            held.accepted_ms,
            held.deadline_ms,
        ]
        for name, value in held.fields().items():
            args += [name, value]
        if await self.total() >= self._cfg.max_total:  # the sum of the shards' counts
            raise OutboxFullError(
                f"the hub holds {self._cfg.max_total} commands for unreachable spokes "
                "(outbox_max_total)"
            )
        async with self._guard():
            done = int(
                await self._hold(
                    keys=[
                        self._due(held.spoke),
                        self._entry(held.spoke, held.key),
                        self._spokes(held.spoke),
                        self._total(held.spoke),
                        self._age(held.spoke),
                        self._deadline(held.spoke),
                    ],
                    args=args,
                )
            )
        if done == -1:
            raise OutboxFullError(
                f"the hub holds {self._cfg.max_per_spoke} commands for spoke {held.spoke} "
                "(outbox_max_per_spoke); retry when it is reachable",
                spoke=held.spoke,
            )
        if done == -2:
            raise OutboxFullError(
                f"the hub holds {self._cfg.max_total} commands for unreachable spokes "
                "(outbox_max_total)"
            )
        return done == 1

    async def spawn(self, spoke: str, agent: str) -> Held | None:
        """The held spawn of ``agent`` for ``spoke``, if any."""
        return await self._get(spoke, f"{SPAWN}:{agent}")

    async def kill(self, spoke: str, agent: str) -> Held | None:
        """The held kill of ``agent`` on ``spoke``, if any."""
        return await self._get(spoke, f"{KILL}:{agent}")

    async def lookup(self, spoke: str, agent: str) -> Lookup:
        """In one round trip: the held spawn of ``agent``, how it ended in the outbox, and a
        held kill of it (each None when there is none)."""
        if self._mux is not None:
            reads = MuxPipe()
            self.queue_lookup(reads, spoke, agent)
            async with self._guard():
                replies = reads.replies(await self._mux.checked(*reads.commands))
            return parse_lookup(replies)
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            self.queue_lookup(pipe, spoke, agent)
            return parse_lookup(await pipe.execute())

    def queue_lookup(self, pipe: Any, spoke: str, agent: str) -> None:
        """Add :meth:`lookup`'s reads to ``pipe`` (three replies, for :func:`parse_lookup`):
        the hub reads them in its admission's round trip (hub/prefetch.py)."""
        pipe.hgetall(self._entry(spoke, f"{SPAWN}:{agent}"))
        pipe.hgetall(self._done(spoke, agent))
        pipe.hgetall(self._entry(spoke, f"{KILL}:{agent}"))

    async def _get(self, spoke: str, key: str) -> Held | None:
        async with self._guard():
            raw = await self._redis.hgetall(self._entry(spoke, key))
        return Held.parse(_texts(raw)) if raw else None

    async def ended(self, spoke: str, agent: str) -> Ended | None:
        """How an undelivered spawn of ``agent`` ended, if it did (within done_ttl_s)."""
        async with self._guard():
            raw = _texts(await self._redis.hgetall(self._done(spoke, agent)))
        return _ended(raw) if raw else None

    async def finish(self, held: Held, state: str = "", reason: str = "") -> bool:
        """Remove ``held`` (delivered, or ended: ``state`` and ``reason`` recorded for a spawn
        that never reached its spoke). False if another hubd removed it first."""
        done_key = self._done(held.spoke, held.agent)
        args: list[str | int] = [held.spoke, held.key, 0]
        if state and held.kind == SPAWN:
            args[2] = int(self._cfg.done_ttl_s * 1000)
            for name, value in {
                "spoke": held.spoke,
                "agent": held.agent,
                "principal": held.principal,
                "state": state,
                "reason": reason,
                "accepted_ms": str(held.accepted_ms),
                "deadline_ms": str(held.deadline_ms),
                "ended_ms": str(_now_ms()),
                "profile": held.profile,
                "task": held.task,
            }.items():
                args += [name, value]
        async with self._guard():
            removed = await self._finish(
                keys=[
                    self._due(held.spoke),
                    self._entry(held.spoke, held.key),
                    self._spokes(held.spoke),
                    self._total(held.spoke),
                    done_key,
                    self._lease(held.spoke, held.key),
                    self._age(held.spoke),
                    self._deadline(held.spoke),
                ],
                args=args,
            )
        return int(removed) == 1

    async def lease(self, held: Held, holder: str) -> bool:
        """Claim ``held`` for delivery by ``holder`` for ``lease_s``; False if another has it."""
        async with self._guard():
            got = await self._redis.set(
                self._lease(held.spoke, held.key),
                holder,
                nx=True,
                px=max(1, int(self._cfg.lease_s * 1000)),
            )
        return bool(got)

    async def release(self, held: Held) -> None:
        async with self._guard():
            await self._redis.delete(self._lease(held.spoke, held.key))

    async def retry_later(self, held: Held, error: str) -> Held:
        """Count a failed attempt and push the next one back (exponential, capped)."""
        attempts = held.attempts + 1
        delay = min(self._cfg.retry_base_s * 2 ** min(attempts - 1, 30), self._cfg.retry_max_s)
        next_ms = _now_ms() + int(delay * 1000)
        score = (_KILL_FIRST + next_ms) if held.kind == KILL else next_ms
        entry = self._entry(held.spoke, held.key)
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(entry)
            pipe.hset(
                entry,
                mapping={"attempts": attempts, "next_ms": next_ms, "last_error": error[:512]},
            )
            pipe.zadd(self._due(held.spoke), {held.key: score}, xx=True)
            pipe.delete(self._lease(held.spoke, held.key))
            existed, *_ = await pipe.execute()
        if not existed:  # finished meanwhile by another hubd: take the fields back out
            async with self._guard():
                await self._redis.delete(entry)
        return dataclasses.replace(held, attempts=attempts, next_ms=next_ms)

    async def due(self, spoke: str, limit: int = 100) -> list[Held]:
        """Entries of ``spoke`` whose next attempt is due, kills first."""
        now = _now_ms()
        async with self._guard():
            kills: Any = await self._redis.zrangebyscore(
                self._due(spoke), "-inf", _KILL_FIRST + now, start=0, num=limit
            )
            spawns: Any = await self._redis.zrangebyscore(
                self._due(spoke), 0, now, start=0, num=limit
            )
        keys = [*kills, *spawns]
        out: list[Held] = []
        seen: set[str] = set()
        for key in sorted({_text(k) for k in keys}, key=lambda k: (not k.startswith(KILL), k)):
            if key in seen:
                continue
            seen.add(key)
            held = await self._get(spoke, key)
            if held is not None:
                out.append(held)
        return out

    async def past_deadline(self, spoke: str, limit: int = 100) -> list[Held]:
        """Spawns of ``spoke`` whose start deadline has passed."""
        async with self._guard():
            keys: Any = await self._redis.zrangebyscore(
                self._deadline(spoke), "-inf", _now_ms(), start=0, num=limit
            )
        found = [await self._get(spoke, _text(k)) for k in keys if _text(k).startswith(SPAWN)]
        return [h for h in found if h is not None]

    async def spokes(self) -> list[str]:
        """Spokes with held commands (every shard's)."""
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for key in self._shard_keys("outbox-spokes"):
                pipe.smembers(key)
            found = await pipe.execute()
        return sorted({_text(s) for members in found for s in members})

    async def entries(self, spoke: str, limit: int) -> list[Held]:
        """Up to ``limit`` of ``spoke``'s entries, kills first, then spawns by acceptance."""
        async with self._guard():
            keys = await self._redis.zrange(self._due(spoke), 0, limit - 1)
        found = [await self._get(spoke, _text(k)) for k in keys]
        return sorted(
            (h for h in found if h is not None), key=lambda h: (h.kind != KILL, h.accepted_ms)
        )

    async def depths(self, spokes: list[str]) -> dict[str, tuple[int, int]]:
        """Per spoke, in one round trip: how many entries it has and the oldest's acceptance
        time (ms; 0 when it has none)."""
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for spoke in spokes:
                pipe.zcard(self._age(spoke))
                pipe.zrange(self._age(spoke), 0, 0, withscores=True)
            got = await pipe.execute()
        out: dict[str, tuple[int, int]] = {}
        for i, spoke in enumerate(spokes):
            count, oldest = int(got[2 * i]), got[2 * i + 1]
            out[spoke] = (count, int(oldest[0][1]) if oldest else 0)
        return out

    async def total(self) -> int:
        """Entries held for every spoke: the sum of the shards' counts."""
        async with self._guard(), self._redis.pipeline(transaction=False) as pipe:
            for key in self._shard_keys("outbox-total"):
                pipe.get(key)
            found = await pipe.execute()
        return sum(int(n or 0) for n in found)

    def _guard(self) -> contextlib.AbstractAsyncContextManager[None]:
        return redis_guard(self._timeout)


Lookup = tuple[Held | None, Ended | None, Held | None]
"""A held spawn of an agent, how it ended in the outbox, and a held kill of it."""


def parse_lookup(replies: Sequence[Any]) -> Lookup:
    """:meth:`Outbox.lookup`'s answer from the three replies ``queue_lookup`` asked for."""
    spawn, done, kill = replies
    return (
        Held.parse(_texts(spawn)) if spawn else None,
        _ended(_texts(done)) if done else None,
        Held.parse(_texts(kill)) if kill else None,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _texts(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {_text(k): _text(v) for k, v in raw.items()}


def _ended(raw: dict[str, str]) -> Ended:
    return Ended(
        spoke=raw["spoke"],
        agent=raw["agent"],
        principal=raw["principal"],
        state=raw["state"],
        reason=raw["reason"],
        accepted_ms=int(raw["accepted_ms"]),
        deadline_ms=int(raw["deadline_ms"]),
        ended_ms=int(raw["ended_ms"]),
        profile=raw.get("profile", ""),
        task=raw.get("task", ""),
    )
