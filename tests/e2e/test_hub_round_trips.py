"""hubd's round trips to its Redis per relayed command (issue 13): a spawn named to a spoke
costs two (the admission, with the membership revision, the drained spokes and the outbox
lookup read in its pipeline; the audit entry, with the agent index write and the membership
revision check of the spoke's reply), a status by bare id two (the admission with the agent
index and the outbox lookup on the spokes the index names, in one script:
hub/index_lookup.py; the audit entry). Before hub/prefetch.py and hub/call_writes.py: 7 and
6; before hub/index_lookup.py a status was 3.

Round trips are counted by a TCP relay between the hub (in process) and a real Redis: each
time a connection writes again after Redis answered it is one more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubspoke import client as hc
from hubspoke import testing
from hubspoke.hub.config import HubConfig

from ..round_trips import RoundTrips, count_round_trips

SPOKE = "spoke-1"


@dataclass
class Counted:
    client: hc.Client
    relay: RoundTrips


@pytest.fixture
async def counted(tmp_path: Path, redis_url: str) -> AsyncIterator[Counted]:
    async with count_round_trips(redis_url) as (relayed, relay):

        def through_relay(cfg: HubConfig) -> HubConfig:  # no outbox polls while counting
            return cfg.replace(redis_url=relayed, outbox_poll_s=3600.0)

        fed = testing.InProcessFederation(
            tmp_path, [SPOKE], redis_url=redis_url, configure_hub=through_relay
        )
        try:
            await fed.start()
            async with hc.client_from_config(
                fed.files.hubctl_config, hub=fed.hub_address, env={}
            ) as client:
                await client.spawn(SPOKE, "synthetic", "duration=0")  # scripts loaded
                yield Counted(client, relay)
        finally:
            await fed.stop()


async def test_a_relayed_spawn_and_a_status_by_bare_id_cost_two_round_trips_each(
    counted: Counted,
) -> None:
    client, relay = counted.client, counted.relay
    ops = 10
    before = relay.turns
    ids = [(await client.spawn(SPOKE, "synthetic", "duration=0")).agent_id for _ in range(ops)]
    assert (relay.turns - before) / ops == 2

    before = relay.turns
    for agent_id in ids:  # by bare id: the agent index (written with the spawn's entry)
        assert (await client.get(agent_id)).agent_id == agent_id
    assert (relay.turns - before) / ops == 2  # 3 before hub/index_lookup.py

    page = await client.audit_log(page_size=2 * ops)  # every call is still on record
    assert [(e.action, e.outcome) for e in page.records] == [("GetAgent", "OK")] * ops + [
        ("SpawnAgent", "OK")
    ] * ops


async def test_concurrent_relayed_calls_share_one_redis_connection(counted: Counted) -> None:
    """The relay path's Redis calls go on hubd's one pipelined connection (hub/mux_pipe.py):
    32 spawns and then 32 statuses at once open no connection (one per call in flight
    without it)."""
    client, relay = counted.client, counted.relay
    before = relay.connections
    spawned = await asyncio.gather(
        *(client.spawn(SPOKE, "synthetic", "duration=0") for _ in range(32))
    )
    got = await asyncio.gather(*(client.get(a.agent_id) for a in spawned))
    assert [a.agent_id for a in got] == [a.agent_id for a in spawned]
    assert relay.connections - before == 0
