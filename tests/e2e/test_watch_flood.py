"""Watch streams relayed by the hub are capped per principal there too (issue 9)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hubspoke import client as hc
from hubspoke.gen.federation.v1 import agent_pb2
from hubspoke.hub.routing_config import MAX_WATCHERS_PER_PRINCIPAL

from .conftest import Federation, wait_state

pytestmark = pytest.mark.slow

RUNNING = agent_pb2.Agent.State.STATE_RUNNING


async def test_the_hub_refuses_watches_beyond_its_per_principal_cap(
    federation: Federation,
) -> None:
    async with federation.client() as client:
        agent = await client.spawn("spoke-1", "synthetic", "duration=60 steps=0")
        await wait_state(client, agent.agent_id, RUNNING)
        opened = [asyncio.Event() for _ in range(MAX_WATCHERS_PER_PRINCIPAL)]

        async def watch(first: asyncio.Event) -> None:
            async for _ in client.watch(agent.agent_id):
                first.set()

        tasks = [asyncio.create_task(watch(first)) for first in opened]
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*(first.wait() for first in opened))
            with pytest.raises(hc.CallError) as info:
                async for _ in client.watch(agent.agent_id):
                    pass
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.reason == "CAPACITY_EXCEEDED"
            assert info.value.metadata["limit"] == "max_watchers_per_principal"
            assert "on hub " in info.value.message
        finally:
            await client.kill(agent.agent_id)
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks, return_exceptions=True)
