"""The schema version key of a Redis, checked and migrated at start-up.

One key per data set holds the version of its layout (``hubspoke.version``). At start-up a
daemon calls :func:`ensure_schema`:

- key absent and no data of ours: a fresh Redis; the current version is written;
- key absent but our data present: version 0 (written before the key existed);
- older than ours: each migration step ``n -> n+1`` runs in order, and the key is set after
  each, so an interrupted upgrade resumes where it stopped. Steps must be idempotent:
  several daemons (spokeds of one site) may start on the same Redis at once;
- newer than ours, or not an integer: :class:`~hubspoke.version.SchemaVersionError`, and
  the daemon refuses to start; nothing is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from .version import SchemaVersionError

__all__ = ["Migration", "SchemaState", "ensure_schema"]

log = structlog.get_logger("hubspoke.schema")

Migration = Callable[[Any], Awaitable[None]]
"""One step ``n -> n+1``, given the Redis client; must be idempotent."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What :func:`ensure_schema` found and did."""

    found: int | None
    """The version on disk before start-up; None for a fresh Redis."""
    current: int
    """The version it holds now (this code's)."""
    migrated: tuple[int, ...]
    """The steps run, by their starting version (``(0,)``: 0 -> 1)."""


async def ensure_schema(
    client: Any,
    key: str,
    current: int,
    migrations: Mapping[int, Migration],
    *,
    owner: str,
    has_data: Callable[[], Awaitable[bool]],
) -> SchemaState:
    """Bring the schema at ``key`` to ``current``, or refuse (see the module docstring).

    Args:
        client: a ``redis.asyncio.Redis`` (decoded replies or not).
        owner: who reads this Redis, for messages (``spoke spoke-1``, ``hub hub``).
        has_data: whether our data is there without a version key (then it is version 0).

    Raises:
        SchemaVersionError: the version is newer than ``current`` or not an integer.
        redis.exceptions.RedisError: Redis failed; the caller reports it.
    """
    raw = await client.get(key)
    if raw is None:
        if not await has_data():
            await client.set(key, current)
            log.info("schema_created", key=key, version=current)
            return SchemaState(None, current, ())
        found = 0
    else:
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        if not text.isdigit():
            raise SchemaVersionError(
                f"{owner}: Redis key {key} holds {text[:32]!r}, not a schema version; "
                "this Redis was not written by hubspoke, or is damaged"
            )
        found = int(text)
    if found > current:
        raise SchemaVersionError(
            f"{owner}: its Redis holds schema version {found} (key {key}), newer than the "
            f"{current} this hubspoke understands; upgrade it, or give it another Redis"
        )
    version, steps = found, []
    while version < current:
        step = migrations.get(version)
        if step is None:  # pragma: no cover - a gap in the table is a bug caught by tests
            raise SchemaVersionError(f"{owner}: no migration from schema version {version}")
        await step(client)
        steps.append(version)
        version += 1
        await client.set(key, version)
        log.info("schema_migrated", key=key, version_from=version - 1, version_to=version)
    if raw is None and not steps:  # pragma: no cover - found == current == 0
        await client.set(key, current)
    return SchemaState(found, current, tuple(steps))
