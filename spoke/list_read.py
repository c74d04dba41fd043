"""A run of the agent time index and its records in one Redis round trip (issue 13).

A list page read the index (``ZREVRANGE``) and then, once the ids were back, every record
(a pipeline of ``HGETALL``): two round trips, and redis-py's per-command work for each. One
script does both, so a page (or each batch a filtered page scans, spoke/pages.py) costs one
``EVALSHA``; the records it returns are the ones the index named at that moment.

The record keys are the spoke's own (``federation:{spoke}:agent:<id>``): the script builds
them from the prefix it is given, in the hash slot of the index it names (``{spoke}``), as
the create script does for its keys.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from hubspoke.redis_mux import RedisMux, ScriptRef

from .keys import SpokeKeys
from .model import AgentRecord

__all__ = ["SCRIPT", "IndexRun"]

SCRIPT = """
local first = tonumber(ARGV[1])
local ids = redis.call('ZREVRANGE', KEYS[1], first, first + tonumber(ARGV[2]) - 1)
local out = {ids}
for i, id in ipairs(ids) do
  out[i + 1] = redis.call('HGETALL', ARGV[3] .. id)
end
return out
"""
"""KEYS[1] the time index; ARGV offset, count, record key prefix. Returns {ids, hash...}:
each hash as HGETALL's flat field/value list, empty for a record that no longer exists."""


def _record(flat: list[bytes]) -> AgentRecord | None:
    raw = dict(zip(flat[::2], flat[1::2], strict=True))
    return AgentRecord.from_hash(raw) if b"state" in raw else None


class IndexRun:
    """``(offset, count)`` → the ids at those positions of the time index, newest first, and
    their records aligned (None where one no longer exists): spoke/pages.py's ``Scan``."""

    def __init__(self, redis: aioredis.Redis, keys: SpokeKeys, mux: RedisMux | None = None) -> None:
        self._script = redis.register_script(SCRIPT)
        self._ref = ScriptRef.of(self._script)
        self._mux = mux
        """The spoke's pipelined connection (shared/redis_mux.py), when it has one: the read
        goes out with whatever else the loop writes in the same iteration."""
        self._index = keys.agent_index
        self._prefix = keys.agent("")

    async def __call__(self, offset: int, count: int) -> tuple[list[str], list[AgentRecord | None]]:
        if count <= 0:  # ZREVRANGE first..first-1 would be the whole index from first
            return [], []
        keys: list[str] = [self._index]
        args: list[int | str] = [offset, count, self._prefix]
        reply: list[Any]
        if self._mux is not None:
            (reply,) = await self._mux.checked_script(self._ref, keys, args)
        else:
            reply = await self._script(keys=keys, args=args)
        ids = [i.decode() for i in reply[0]]
        return ids, [_record(flat) for flat in reply[1:]]
