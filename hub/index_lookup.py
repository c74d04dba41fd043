"""A verb on an agent by bare id: the agent index and the outbox's lookup of the agent on the
spokes the index names, read in one script (issue 13, round 3).

Before it, a status by bare id read the index with the admission (hub/prefetch.py) and the
outbox's lookup on the spoke the index named in a round trip of its own (hub/outbox_desk.py),
since the spoke was not known before the index was read. The script reads both on Redis's
side: the index hash, the old-layout entry and Redis's clock (what ``HubStore.queue_find``
reads, answered in the same form for ``parse_found``), then, for each spoke with a live
entry (at most :data:`MAX_SPOKES`), the three hashes ``Outbox.queue_lookup`` reads, under
the shard key the spoke's outbox has (hub/outbox_keys.py: CRC-32 of the name, computed in
the script). A spoke past the bound is looked up as before, in a read of its own.

It runs in the admission's pipeline, right after the admission script, so it reads after the
command was admitted, as the separate reads did. One Redis only (keys it computes are not
declared; hub/prefetch.py prefetches nothing on a Redis Cluster). The script is loaded when
the hub starts (:meth:`IndexLookup.load`); until it is, or after Redis lost it (NOSCRIPT), the
reads are made as before and the script is loaded again in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio
import redis.exceptions
import structlog

from .outbox import KILL, SPAWN, Lookup, parse_lookup
from .outbox_keys import SHARDS, shard_base
from .store import agent_index_key, agent_key, parse_found

__all__ = ["MAX_SPOKES", "Found", "IndexLookup"]

log = structlog.get_logger("hubspoke.hub.index_lookup")

MAX_SPOKES: Final = 4
"""Most spokes one call's script looks the agent up on (an id is on one spoke but when a
caller reused it); the others are looked up as before."""

if SHARDS & (SHARDS - 1):  # the script takes the shard as the CRC's low bits
    raise AssertionError("hub/outbox_keys.py SHARDS must be a power of two")

_SCRIPT: Final = """
local function crc32(s)
  local crc = -1
  for i = 1, #s do
    crc = bit.bxor(crc, string.byte(s, i))
    for _ = 1, 8 do
      crc = bit.bxor(bit.rshift(crc, 1), bit.band(-0x12477CE0, -bit.band(crc, 1)))
    end
  end
  return bit.bnot(crc)
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local entries = redis.call('HGETALL', ARGV[1])
local legacy = redis.call('GET', ARGV[2])
local out = {entries, legacy, now}
local spokes = {}
for i = 1, #entries, 2 do
  if (tonumber(entries[i + 1]) or 0) > now_ms then spokes[#spokes + 1] = entries[i] end
end
if legacy then spokes[#spokes + 1] = legacy end
local agent, max, mask = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[4]) - 1
for i = 1, math.min(#spokes, max) do
  local spoke = spokes[i]
  local base = 'federation:hub:{' .. ARGV[3] .. ':o' .. bit.band(crc32(spoke), mask) .. '}'
  local entry = base .. ':outbox:' .. spoke .. ':'
  out[#out + 1] = spoke
  out[#out + 1] = redis.call('HGETALL', entry .. ARGV[7] .. ':' .. agent)
  out[#out + 1] = redis.call('HGETALL', base .. ':outbox-done:' .. spoke .. ':' .. agent)
  out[#out + 1] = redis.call('HGETALL', entry .. ARGV[8] .. ':' .. agent)
end
return out
"""
"""ARGV: index key, old-layout key, hub, SHARDS, agent id, MAX_SPOKES, the spawn and kill
entry kinds. -0x12477CE0 is CRC-32's polynomial 0xEDB88320 as the signed 32-bit number
Redis's ``bit`` library works in."""


@dataclass(frozen=True, slots=True)
class Found:
    """What the script read for one agent id."""

    agent: str
    spokes: tuple[str, ...]
    """The spokes the index holds it on (as ``HubStore.find_agent`` answers)."""
    lookups: Mapping[str, Lookup]
    """The outbox's lookup of the agent on each spoke the script looked it up on."""


def _hash(flat: Any) -> dict[str, str]:
    items = list(flat or [])
    return dict(zip(items[::2], items[1::2], strict=True))


def _check_prefix() -> None:
    """The script builds the outbox's keys as hub/outbox_keys.py does: check the form."""
    if shard_base("H", 3) != "federation:hub:{H:o3}":
        raise AssertionError("hub/index_lookup.py builds shard keys in an old form")


_check_prefix()


class IndexLookup:
    """The script, its loading, and its reply read back (module docstring)."""

    def __init__(self, client: redis.asyncio.Redis, hub: str, timeout_s: float = 2.0) -> None:
        """``timeout_s``: how long a load may take (the hub's ``redis_timeout_s``)."""
        self._redis = client
        self._hub = hub
        self._timeout = timeout_s
        self._script = client.register_script(_SCRIPT)
        self._loaded = False
        self._loading: asyncio.Task[None] | None = None

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    async def load(self) -> None:
        """Load the script into Redis (hubd's start-up; again after NOSCRIPT). A failure is
        logged: the reads are then made as before."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.script_load(_SCRIPT)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log.warning("index_lookup_not_loaded", problem=str(exc) or type(exc).__name__)
            return
        self._loaded = True

    def usable(self) -> bool:
        """Whether the script may be used now; if not, start loading it (once at a time)."""
        if not self._loaded and (self._loading is None or self._loading.done()):
            self._loading = asyncio.get_running_loop().create_task(self.load())
        return self._loaded

    def lost(self) -> None:
        """Redis answered NOSCRIPT (restarted, flushed): load the script again before use."""
        self._loaded = False

    def queue(self, pipe: Any, agent: str) -> None:
        """Add the script for ``agent`` to ``pipe`` (one reply, for :meth:`parse`)."""
        pipe.execute_command(
            "EVALSHA",
            self.sha,
            0,
            agent_index_key(self._hub, agent),
            agent_key(self._hub, agent),
            self._hub,
            SHARDS,
            agent,
            MAX_SPOKES,
            SPAWN,
            KILL,
        )

    def parse(self, agent: str, replies: Sequence[Any]) -> Found:
        """The script's reply (as the hub's decoding client gives it) read back."""
        (reply,) = replies
        entries, legacy, (secs, micros), *rest = reply
        spokes = parse_found([_hash(entries), legacy, (int(secs), int(micros))])
        lookups = {
            str(rest[i]): parse_lookup([_hash(rest[i + 1]), _hash(rest[i + 2]), _hash(rest[i + 3])])
            for i in range(0, len(rest), 4)
        }
        return Found(agent, spokes, lookups)
