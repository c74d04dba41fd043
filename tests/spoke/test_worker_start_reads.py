"""What the worker reads before an agent starts (issue 13, spawn-to-running): a first attempt
with no message kept reads no inbox (its record counts ``inputs``: 0). Attempts with messages
still get them: tests/e2e/test_input.py."""

from __future__ import annotations

import redis.asyncio as aioredis

from hubspoke.spoke.app import SpokeApp

from .conftest import SpokeClient, command_calls


async def _lranges(r: aioredis.Redis) -> int:
    return await command_calls(r, "lrange")


async def test_a_first_attempt_without_messages_reads_no_inbox(
    spoke_app: SpokeApp, client: SpokeClient, redis_client: aioredis.Redis
) -> None:
    for _ in range(3):
        before = await _lranges(redis_client)
        reply = await client.spawn("duration=0")
        done = await client.wait_state(reply.agent.agent_id, "SUCCEEDED")
        assert done.exit_code == 0
        assert await _lranges(redis_client) == before
