"""The spoke's bullmq worker asks Redis for a job once per fetch it needs, not once per idle
slot (spoke/bull_worker.py; issue 13, spawn-to-running), and still takes every job: a
backlog larger than ``concurrency`` runs ``concurrency`` at a time, by priority. Real spoke,
real Redis, real agents."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bullmq import Worker

from hubspoke.spoke.app import SpokeApp

from .conftest import SpokeClient

pytestmark = pytest.mark.asyncio


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every ``moveToActive`` the worker runs (bullmq's own method, counted): whether it took
    a job."""
    seen: list[bool] = []
    original = Worker.moveToActive

    async def counted(self: Any, token: str) -> Any:
        job = await original(self, token)
        seen.append(job is not None)
        return job

    monkeypatch.setattr(Worker, "moveToActive", counted)
    return seen


async def test_one_agent_at_a_time_costs_a_few_fetches_not_one_per_slot(
    fetches: list[bool],
    start_spoke: Any,
) -> None:
    """concurrency 8, 10 agents one after another: bullmq-python's fetchers all asked at once
    (6-9 ``moveToActive`` per agent measured with concurrency 4); now at most 3."""
    _, client = await start_spoke(concurrency=8)
    client_: SpokeClient = client
    await asyncio.sleep(0.3)  # the worker's first fetches, before any agent
    fetches.clear()
    agents = 10
    for _ in range(agents):
        reply = await client_.spawn("duration=0")
        await client_.wait_state(reply.agent.agent_id, "SUCCEEDED")
    assert sum(fetches) == agents
    assert len(fetches) <= 3 * agents, f"{len(fetches)} fetches for {agents} agents"


async def test_a_backlog_still_runs_concurrency_at_a_time_by_priority(
    fetches: list[bool], start_spoke: Any, redis_url: str
) -> None:
    """Queued while paused, 6 agents with concurrency 3: all run, never more than 3 at once,
    the most urgent first."""
    app, client = await start_spoke(concurrency=3)
    spoke: SpokeApp = app
    c: SpokeClient = client
    await spoke._queue.jobs.queue.pause()
    ids: list[tuple[int, str]] = []
    for priority in (1, 2, 3, 7, 8, 9):
        reply = await c.spawn("duration=0.5", priority=priority)
        ids.append((priority, reply.agent.agent_id))
    await spoke._queue.jobs.queue.resume()
    most = 0
    started: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(started) < len(ids) or spoke._worker.running_agents:  # type: ignore[union-attr]
        running = spoke._worker.running_agents  # type: ignore[union-attr]
        most = max(most, len(running))
        for agent in running:
            started.setdefault(agent, len(started))
        assert loop.time() < deadline, f"started {len(started)} of {len(ids)}"
        await asyncio.sleep(0.01)
    for _, agent in ids:
        await c.wait_state(agent, "SUCCEEDED")
    assert most == 3
    first = {agent for _, agent in sorted(ids, reverse=True)[:3]}
    assert {a for a, order in started.items() if order < 3} == first
