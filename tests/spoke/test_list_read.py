"""A list page costs the spoke one Redis round trip for its records (issue 13): the time
index and the page's records are read by one script (spoke/list_read.py), not a ZREVRANGE
and then a pipeline of HGETALLs. Round trips are counted by a TCP relay in front of a real
Redis (each time the client writes again after Redis answered is one more); the agents are
stored by the spoke's own create path.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import pytest
import redis.asyncio as aioredis

from hubspoke.redis_mux import RedisMux
from hubspoke.spoke.fanout import StreamFanout
from hubspoke.spoke.keys import SpokeKeys
from hubspoke.spoke.model import AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue
from hubspoke.spoke.records import Records

from ..round_trips import RoundTrips

SPOKE = "spoke-1"
AGENTS = 25


def _request(n: int) -> SpawnRequest:
    agent_id = str(uuid.uuid4())
    return SpawnRequest(
        agent_id=agent_id,
        issuer="operator" if n % 2 else "other",
        profile="synthetic",
        task=f"task {n}",
        priority=0,
        timeout_ms=60_000,
        max_attempts=1,
        labels={"n": str(n)},
        digest=hashlib.sha256(agent_id.encode()).hexdigest(),
        expire_ms=int((time.time() + 3600) * 1000),
        envelope=b"signed",
    )


@pytest.fixture
async def stored(redis_url: str) -> list[str]:
    """AGENTS agents queued through the spoke's create path, oldest first."""
    queue = AgentQueue(redis_url, SPOKE)
    ids = []
    try:
        for n in range(AGENTS):
            rec, _ = await queue.create(_request(n), 10**6)
            ids.append(rec.agent_id)
            await asyncio.sleep(0.002)  # distinct create_ms: the index orders by time
    finally:
        await queue.close()
    return ids


@pytest.mark.parametrize("on_mux", [False, True], ids=["command-client", "mux"])
async def test_a_page_reads_its_index_and_records_in_one_round_trip(
    relayed: tuple[aioredis.Redis, RoundTrips], stored: list[str], redis_url: str, on_mux: bool
) -> None:
    client, seen = relayed
    keys = SpokeKeys(SPOKE)
    fanout = StreamFanout(redis_url, keys, client)
    mux = RedisMux.of(client, 5.0) if on_mux else None  # the spoke's pipelined connection
    records = Records(client, keys, fanout, mux=mux)
    try:
        await records.list_page(1, "")  # loads the script once (NOSCRIPT, SCRIPT LOAD)
        newest_first = stored[::-1]

        before = seen.turns
        page = await records.list_page(10, "")
        assert seen.turns - before == 1  # was 2: ZREVRANGE, then 10 HGETALLs
        assert [a.agent_id for a in page.agents] == newest_first[:10]
        assert all(a.state is AgentState.QUEUED for a in page.agents)
        assert page.agents[0].labels == {"n": str(AGENTS - 1)}

        token = await _token_after(records, 2)
        before = seen.turns
        last = await records.list_page(10, token)
        assert seen.turns - before == 1
        assert [a.agent_id for a in last.agents] == newest_first[20:]
        assert last.next_token == ""  # a short page ends the listing

        # A filtered page reads batch after batch: one round trip per batch of the index.
        before = seen.turns
        mine = await records.list_page(10, "", owner="operator")
        assert seen.turns - before == 2  # 20 entries read to keep 10 (every other one)
        assert [a.agent_id for a in mine.agents] == stored[1::2][::-1][:10]
    finally:
        if mux is not None:
            await mux.close()
        await fanout.close()


async def _token_after(records: Records, pages: int) -> str:
    token = ""
    for _ in range(pages):
        token = (await records.list_page(10, token)).next_token
    return token
