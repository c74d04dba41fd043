"""Where the hub's outbox lives in Redis: one hash tag per shard of spokes, so a Redis
Cluster spreads the outboxes over its nodes, and the move from the one-tag layout of hub
schema 2 (hub/store.py runs it at start-up).

A spoke's outbox belongs to shard ``crc32(spoke) % SHARDS``; every key of that spoke, and
its shard's set of spokes and count of entries, carry the tag ``{<hub>:o<shard>}``, so each
outbox script touches one hash slot. The count of all entries (``outbox_max_total``) is the
sum of the shards' counts, read before a hold: hubds holding at the same moment for spokes
of different shards may pass the bound together by those few entries, never more.

Schema 2 kept everything under ``{<hub>}`` (one slot). :func:`move_from_hub_tag` copies each
such key to its shard's name (TTLs kept; leases dropped: a delivery in flight is retried,
and the spoke's claim on the command id keeps it at most once), rebuilds the shards' sets
and counts, and deletes the old keys. Every step reads or writes one key, so it runs on one
Redis and on a cluster alike; run again after an interruption, it finishes the move.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from typing import Any, Final

import redis.asyncio

__all__ = ["SHARDS", "move_from_hub_tag", "shard_base", "shard_of"]

SHARDS: Final = 16
"""Shards of the outbox. Part of the key layout: changing it is a schema change."""


def shard_of(spoke: str) -> int:
    """The shard a spoke's outbox belongs to."""
    return zlib.crc32(spoke.encode()) % SHARDS


def shard_base(hub: str, shard: int) -> str:
    """The key prefix (with its hash tag) of one shard."""
    return f"federation:hub:{{{hub}:o{shard}}}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _copy(client: Any, old: str, new: str) -> None:
    """Copy one key (hash, sorted set, set or string) to ``new`` with its TTL."""
    kind = _text(await client.type(old))
    ttl = int(await client.pttl(old))
    if kind == "hash":
        fields = await client.hgetall(old)
        if fields:
            await client.hset(new, mapping=fields)
    elif kind == "zset":
        members = await client.zrange(old, 0, -1, withscores=True)
        if members:
            await client.zadd(new, dict(members))
    elif kind == "set":
        members = await client.smembers(old)
        if members:
            await client.sadd(new, *members)
    elif kind == "string":
        await client.set(new, await client.get(old))
    else:
        return  # gone meanwhile
    if ttl > 0:
        await client.pexpire(new, ttl)


async def move_from_hub_tag(client: redis.asyncio.Redis, hub: str) -> int:
    """Move every outbox key of ``hub`` from the schema 2 layout; how many keys moved."""
    prefix = f"federation:hub:{{{hub}}}:"
    found = [_text(k) async for k in client.scan_iter(match=f"{prefix}outbox*", count=1000)]
    moved = 0
    for old in found:
        name = old.removeprefix(prefix)
        kind, _, rest = name.partition(":")
        if kind in ("outbox-spokes", "outbox-total") or not rest:
            continue  # rebuilt below
        spoke = rest.split(":", 1)[0]
        if kind != "outbox-lease":
            await _copy(client, old, f"{shard_base(hub, shard_of(spoke))}:{name}")
        await client.delete(old)
        moved += 1
    # The shards' sets and counts, from every due set now in the new layout (so a move
    # interrupted and run again still counts what the first run moved).
    spokes: dict[int, set[str]] = defaultdict(set)
    pattern = f"federation:hub:{{{hub}:o*}}:outbox-due:*"
    async for key in client.scan_iter(match=pattern, count=1000):
        spoke = _text(key).rpartition(":outbox-due:")[2]
        spokes[shard_of(spoke)].add(spoke)
    for shard, names in spokes.items():
        base = shard_base(hub, shard)
        await client.sadd(f"{base}:outbox-spokes", *names)
        total = 0
        for spoke in names:
            total += int(await client.zcard(f"{base}:outbox-due:{spoke}"))
        await client.set(f"{base}:outbox-total", total)
    await client.delete(f"{prefix}outbox-spokes", f"{prefix}outbox-total")
    return moved
