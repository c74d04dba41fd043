"""The spoke site's schema version (``federation:{spoke}:schema``), checked at start-up.

Every spoked checks it before it serves: a Redis written by a newer hubspoke makes it refuse
to start; an older one is migrated (``MIGRATIONS``) first. See ``hubspoke.schema``.

Versions:

- 0: before the key existed (this layout, unversioned).
- 1: the key exists; the data is the same as version 0, so the step 0 -> 1 only writes it.
"""

from __future__ import annotations

from typing import Any, Final

from hubspoke.schema import Migration, SchemaState, ensure_schema
from hubspoke.version import SPOKE_SCHEMA_VERSION

from .keys import SpokeKeys

__all__ = ["MIGRATIONS", "ensure_spoke_schema"]


async def _unversioned_to_1(client: Any) -> None:
    """Version 1 is the unversioned layout plus the key: nothing to move."""


MIGRATIONS: Final[dict[int, Migration]] = {0: _unversioned_to_1}
"""Step ``n -> n+1`` by ``n``; one per version up to ``SPOKE_SCHEMA_VERSION``."""


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
        MIGRATIONS,
        owner=f"spoke {keys.spoke}",
        has_data=has_data,
    )
