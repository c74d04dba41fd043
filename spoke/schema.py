"""The spoke site's schema version (``federation:{spoke}:schema``), checked at start-up.

Every spoked checks it before it serves: a Redis written by a newer hubspoke makes it refuse
to start; an older one is migrated (``migrations``) first. See ``hubspoke.schema``.

Versions:

- 0: before the key existed (this layout, unversioned).
- 1: the key exists; the data is the same as version 0, so the step 0 -> 1 only writes it.
- 2: every write that stores a QUEUED record and adds its job in two round trips marks itself
  first (spoke/job_pending.py), so spoked's start-up scan reads only those marks. The step
  1 -> 2 moves nothing: it leaves ``full_scan_owed``, and the first start-up scan after it
  reads every record once (quota recount, start-deadline back-fill, orphaned jobs: data an
  older release wrote without marks) and removes the flag (spoke/start_up_scan.py). A release
  of schema 1 refuses the site from then on, so no write without its mark joins it.
"""

from __future__ import annotations

from typing import Any

from hubspoke.schema import Migration, SchemaState, ensure_schema
from hubspoke.version import SPOKE_SCHEMA_VERSION

from .keys import SpokeKeys

__all__ = ["ensure_spoke_schema", "migrations"]


async def _unversioned_to_1(client: Any) -> None:
    """Version 1 is the unversioned layout plus the key: nothing to move."""


def _owe_the_full_scan(keys: SpokeKeys) -> Migration:
    async def step(client: Any) -> None:
        """Version 2 adds the index of two-step writes; older data gets one full scan."""
        await client.set(keys.full_scan_owed, 1)

    return step


def migrations(keys: SpokeKeys) -> dict[int, Migration]:
    """Step ``n -> n+1`` by ``n``; one per version up to ``SPOKE_SCHEMA_VERSION``."""
    return {0: _unversioned_to_1, 1: _owe_the_full_scan(keys)}


async def ensure_spoke_schema(client: Any, keys: SpokeKeys) -> SchemaState:
    """Check, migrate or create the site's schema version key.

    Raises:
        hubspoke.version.SchemaVersionError: the site's Redis has a newer schema.
        redis.exceptions.RedisError: Redis failed.
    """

    async def has_data() -> bool:
        # Keys every site that ever served has (the agent index, the worker registry,
        # bullmq's queue meta and id counter): O(1), unlike a SCAN.
        found = await client.exists(
            keys.agent_index, keys.workers, keys.bull("meta"), keys.bull("id")
        )
        return int(found) > 0

    return await ensure_schema(
        client,
        keys.schema,
        SPOKE_SCHEMA_VERSION,
        migrations(keys),
        owner=f"spoke {keys.spoke}",
        has_data=has_data,
    )
