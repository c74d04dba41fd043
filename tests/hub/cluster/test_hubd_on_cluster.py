"""A real hubd (a process) whose Redis is the local Redis Cluster, in front of a real spoked
on a Redis of its own: spawn, status, kill and a selector spawn through it, with hubctl too;
then the hub's keys are on at least two of the cluster's primaries (CLUSTER KEYSLOT against
CLUSTER SLOTS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import testing
from hubspoke.gen.federation.v1 import agent_pb2

Agent = agent_pb2.Agent
SPOKES = ("spoke-1", "spoke-2")
FINAL = frozenset(int(s) for s in hc.FINAL_STATES)


@pytest.fixture
async def fed(tmp_path: Path, redis_url: str) -> AsyncIterator[testing.Federation]:
    """hubd on the cluster (``redis_url`` is the cluster's, emptied); spoke-1 and spoke-2
    on private servers."""
    federation = testing.Federation(tmp_path, SPOKES, hub_redis=redis_url)
    try:
        files = await federation.prepare()
        text = files.hub_config.read_text()
        for name in SPOKES:  # operator labels, for a selector spawn
            marker = f'[[spokes]]\nname = "{name}"\n'
            text = text.replace(marker, f'{marker}labels = {{ pool = "x" }}\n')
        files.hub_config.write_text(text)
        await federation.start()
        yield federation
    finally:
        await federation.stop()


async def _until(client: hc.Client, agent_id: str, states: frozenset[int]) -> int:
    """The agent's state once it is one of ``states`` (polled: the state is the spoke's)."""
    async with asyncio.timeout(20):
        while (state := (await client.get(agent_id)).state) not in states:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return state


async def test_spawn_status_kill_through_a_hubd_on_the_cluster(
    fed: testing.Federation, hub_cluster: testing.EmbeddedRedisCluster
) -> None:
    async with fed.client() as client:
        done = [await client.spawn(s, "synthetic", "duration=0.05") for s in ("spoke-1", "spoke-2")]
        slow = await client.spawn("spoke-1", "synthetic", "duration=30")
        for agent in done:
            assert await _until(client, agent.agent_id, FINAL) == Agent.STATE_SUCCEEDED
        await _until(client, slow.agent_id, frozenset({Agent.STATE_RUNNING}))
        picked = await client.spawn("", "synthetic", "duration=0.05", selector={"pool": "x"})
        assert picked.spoke in ("spoke-1", "spoke-2")
    status = await testing.run_hubctl(
        fed.files.hubctl_config, fed.hub_address, "status", slow.agent_id, "--json"
    )
    assert status.code == 0, status.stderr
    assert status.doc()["state"] == "RUNNING"
    kill = await testing.run_hubctl(
        fed.files.hubctl_config, fed.hub_address, "kill", slow.agent_id, "--json"
    )
    assert kill.code == 0, kill.stderr
    async with fed.client() as client:
        assert await _until(client, slow.agent_id, FINAL) == Agent.STATE_KILLED
    hub_keys = await hub_cluster.keys("federation:hub:*")
    assert any(":agent-at:" in k for k in hub_keys)
    assert any(k.startswith("federation:hub:{hub:p:operator}:nonce:") for k in hub_keys)
    primaries = await hub_cluster.primaries_of(hub_keys)
    assert len(primaries) >= 2, primaries
