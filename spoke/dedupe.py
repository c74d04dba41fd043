"""Dedupe keys at the spoke: the claim an owner's key holds on its agent (docs/protocol.md
§4.7; the key itself is resolved by :mod:`hubspoke.dedupe`).

A claim is one Redis string, ``SpokeKeys.dedupe(owner, key)`` → the agent's id. The create
script (spoke/records_lua.py, ``CREATE``) reads it atomically with the record it writes: a
claim whose agent is not final makes the spawn answer with that agent
(:class:`DeduplicatedError`); a claim that is free (none, its agent final or gone) is taken
by the new agent. So a claim ends with its agent and needs no write at the end; the sweeper
drops the claim with the record it forgets (``release``).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .backend import QueueError
from .keys import SpokeKeys

STALE_RETRIES = 5
"""How often a create is tried again when the claim changed between its read and the script
(another spawn with the same key took it meanwhile)."""

_RELEASE = """
-- KEYS: the claim. ARGV: the agent id. Drops the claim only while it still names that agent.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DeduplicatedError(QueueError):
    """The spawn's dedupe key is claimed by an agent of the same owner that is not final."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"dedupe key held by agent {agent_id}")
        self.agent_id = agent_id


class ContendedError(QueueError):
    """The claim changed hands ``STALE_RETRIES`` times while this spawn tried to read it."""

    def __init__(self, dedupe_key: str) -> None:
        super().__init__(f"dedupe key {dedupe_key} changed hands {STALE_RETRIES} times")


async def claim_keys(
    redis: aioredis.Redis, keys: SpokeKeys, owner: str, dedupe_key: str
) -> list[str]:
    """The create script's extra keys for a spawn with ``dedupe_key`` (none without one): the
    claim, and the record of the agent it names now (the record key of "" if none)."""
    if not dedupe_key:
        return []
    claim = keys.dedupe(owner, dedupe_key)
    held: bytes | None = await redis.get(claim)  # type: ignore[assignment]  # bytes: decode_responses is off
    return [claim, keys.agent(held.decode() if held else "")]


async def release(
    redis: aioredis.Redis, keys: SpokeKeys, owner: str, dedupe_key: str, agent_id: str
) -> None:
    """Drop the claim of a forgotten agent, unless a newer agent holds it."""
    if dedupe_key:
        await redis.eval(_RELEASE, 1, keys.dedupe(owner, dedupe_key), agent_id)
