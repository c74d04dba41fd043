"""Dedupe claims in the spoke's Redis (spoke/dedupe.py, the create script) and the timing
sink (spoke/timings.py), on a real Redis: claims per owner, freed by a final agent, repointed
when another spawn takes the key meanwhile, dropped by the sweeper with their agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hubspoke.spoke import dedupe
from hubspoke.spoke.model import AgentState, SpawnRequest
from hubspoke.spoke.queue import AgentQueue

S = AgentState


@pytest.fixture
async def q(redis_url: str) -> AsyncIterator[AgentQueue]:
    queue = AgentQueue(redis_url, "spoke-dd")
    try:
        yield queue
    finally:
        await queue.close()


def spawn(agent_id: str, key: str, issuer: str = "operator") -> SpawnRequest:
    return SpawnRequest(
        agent_id=agent_id,
        issuer=issuer,
        profile="synthetic",
        task="x",
        priority=5,
        timeout_ms=1000,
        max_attempts=1,
        labels={},
        digest=f"d-{agent_id}",
        expire_ms=0,
        envelope=b"e",
        dedupe_key=key,
    )


async def test_a_claim_holds_while_its_agent_is_not_final(q: AgentQueue) -> None:
    rec, created = await q.create(spawn("dd-1", "k"), 100)
    assert created
    assert rec.dedupe_key == "k"
    assert (await q.records.get("dd-1")).dedupe_key == "k"
    with pytest.raises(dedupe.DeduplicatedError) as info:
        await q.create(spawn("dd-2", "k"), 100)
    assert info.value.agent_id == "dd-1"
    assert await q.records.get_or_none("dd-2") is None  # nothing stored for the second
    # The same id again is the same spawn (idempotency first), not a dedupe answer.
    assert (await q.create(spawn("dd-1", "k"), 100))[1] is False
    # Another owner's key of the same text is its own.
    assert (await q.create(spawn("dd-3", "k", issuer="alice"), 100))[1]
    # Final: the key is free, and the next spawn holds it.
    await q.records.transition("dd-1", [S.QUEUED], S.EXPIRED, "NOT_STARTED")
    assert (await q.create(spawn("dd-4", "k"), 100))[1]
    with pytest.raises(dedupe.DeduplicatedError) as info:
        await q.create(spawn("dd-5", "k"), 100)
    assert info.value.agent_id == "dd-4"


async def test_a_claim_read_stale_is_read_again(
    q: AgentQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    await q.create(spawn("st-1", "k2"), 100)
    await q.records.transition("st-1", [S.QUEUED], S.EXPIRED, "NOT_STARTED")
    # Another spawn takes the key between this spawn's read and its script: the script sees
    # the claim changed hands ("stale") and the spawn reads it again, finding st-2.
    claim = q.keys.dedupe("operator", "k2")
    real = dedupe.claim_keys
    calls = 0

    async def racing(*args: Any) -> list[str]:
        nonlocal calls
        calls += 1
        keys = await real(*args)
        if calls == 1:
            await q.redis.hset(
                q.keys.agent("st-2"), mapping={"agent_id": "st-2", "state": "RUNNING"}
            )
            await q.redis.set(claim, "st-2")
        return keys

    monkeypatch.setattr(dedupe, "claim_keys", racing)
    with pytest.raises(dedupe.DeduplicatedError) as info:
        await q.create(spawn("st-3", "k2"), 100)
    assert info.value.agent_id == "st-2"
    assert calls == 2


async def test_the_sweeper_drops_the_claim_with_its_agent(q: AgentQueue) -> None:
    await q.create(spawn("sw-1", "k3"), 100)
    await q.records.transition("sw-1", [S.QUEUED], S.EXPIRED, "NOT_STARTED")
    claim = q.keys.dedupe("operator", "k3")
    assert await q.redis.get(claim) == b"sw-1"
    await asyncio.sleep(0.01)  # its end is then before the sweep's cutoff
    assert await q.records.sweep(retention_ms=0) >= 1
    assert await q.redis.get(claim) is None


async def test_timings_reach_the_sink(q: AgentQueue) -> None:
    seen: list[tuple[str, str, float]] = []
    q.records.timed = lambda span, profile, s: seen.append((span, profile, s))
    await q.create(spawn("tm-1", ""), 100)
    await q.records.transition("tm-1", [S.QUEUED], S.STARTING, fields={"attempt": 1})
    started = int(time.time() * 1000)
    await q.records.transition("tm-1", [S.STARTING], S.RUNNING, fields={"start_ms": started})
    await q.records.transition("tm-1", [S.RUNNING], S.SUCCEEDED)
    assert [(span, profile) for span, profile, _ in seen] == [
        ("queue_wait", "synthetic"),
        ("run", "synthetic"),
    ]
    assert all(0 <= s < 5 for _, _, s in seen)
