"""Agents survive a spoked restart (issue 13), through real processes: a hubd, a spoked of
concurrency 100 and their redis-servers. 100 agents run under their supervisors
(spoke/supervisor.sh); spoked is SIGKILLed and started again 10 s later, or stopped with
SIGTERM (an upgrade) and started again. The ledger agent (tests/agents/ledger_agent.py)
writes a line per run start and end, so a run twice or a run lost shows; each agent prints a
line first and a receipt last and exits with the code its task names, so every exit code and
output tail is checked against what the agent did. One federation serves the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from hubspoke import client as hc
from hubspoke import testing
from hubspoke.client import AgentState, CallError

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(180),
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[2]
SPOKE = "spoke-1"
AGENTS = 100
DOWN_S = 10.0

# Runs until AFTER seconds past the moment the test writes READY/go (the fault), whenever it
# started: so every agent is running at the fault, and when each ends is known beforehand.
AGENT = """
import json, os, sys, time
sys.path.insert(0, {agents!r})
import ledger_agent
me = os.environ["HUBSPOKE_AGENT_ID"]
opts = dict(w.split("=", 1) for w in os.environ["HUBSPOKE_TASK"].split())
print("begin", me, flush=True)
open(os.path.join(opts["ready"], me), "w").close()
go = os.path.join(opts["ready"], "go")
while not os.path.exists(go):
    time.sleep(0.05)
fault = float(open(go).read())
os.environ["HUBSPOKE_TASK"] = "sleep=%.3f" % max(0.0, fault + float(opts["after"]) - time.time())
ledger_agent.main()
code = int(opts["code"])
status = "completed" if code == 0 else "failed"
print(json.dumps({{"status": status, "summary": "end " + me}}), flush=True)
sys.exit(code)
"""


@dataclass
class Fed:
    fed: testing.Federation
    client: hc.Client
    ledger: Path
    state_dir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fed]:
    root = tmp_path_factory.mktemp("supervised")
    ledger = root / "ledger.jsonl"
    agent = root / "agent.py"
    agent.write_text(AGENT.format(agents=str(REPO / "tests" / "agents")))
    profile = (
        "\n[profiles.once]\n"
        f"argv = {json.dumps([sys.executable, str(agent)])}\n"
        "task_on_stdin = false\n"
        "timeout_seconds = 120\n"
        f"env = {{ LEDGER = {json.dumps(str(ledger))} }}\n"
    )
    state_dir = root / "agents"
    fed = testing.Federation(
        root,
        [SPOKE],
        spoke_profiles=testing.DEFAULT_PROFILES + profile,
        spoke_env={
            "SPOKE_CONCURRENCY": str(AGENTS),
            "SPOKE_RATE_BURST": "1000",  # the test reads 100 agents every second
            "SPOKE_RATE_PER_PRINCIPAL": "1000",
            "SPOKE_AGENT_STATE_DIR": str(state_dir),
            "SPOKE_LEAVE_AGENTS_ON_SHUTDOWN": "true",  # the production default (harness: false)
            # The dead spoked's jobs come back soon after the restart.
            "SPOKE_LOCK_DURATION_MS": "3000",
            "SPOKE_STALLED_INTERVAL_MS": "1000",
        },
        hub_env={
            "HUB_RATE_BURST": "1000",
            "HUB_RATE_PER_PRINCIPAL": "1000",
            "HUB_CIRCUIT_OPEN_S": "1",
            "HUB_PROBE_INTERVAL_S": "0.5",
        },
    )
    try:
        await fed.start()
        async with fed.client(timeout_s=30) as client:
            yield Fed(fed, client, ledger, state_dir)
    finally:
        await fed.stop()


async def _get(client: hc.Client, agent_id: str) -> Any | None:
    try:
        return await client.get(agent_id, SPOKE)
    except CallError:  # the spoke restarting, or the hub's circuit to it not closed yet
        return None


async def _states(client: hc.Client, ids: list[str]) -> dict[str, Any]:
    got = await asyncio.gather(*(_get(client, i) for i in ids))
    return {i: a for i, a in zip(ids, got, strict=True) if a is not None}


async def _until_all(
    client: hc.Client, ids: list[str], done: Any, timeout_s: float
) -> dict[str, Any]:
    now: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                now = await _states(client, ids)
                if len(now) == len(ids) and all(done(a) for a in now.values()):
                    return now
                await asyncio.sleep(1.0)
    except TimeoutError:
        left = Counter((a.state, a.reason) for a in now.values() if not done(a))
        pytest.fail(f"{len(ids) - len(now)} unanswered, not yet done: {left}")


async def _spawn_all(client: hc.Client, tasks: list[str]) -> list[str]:
    gate = asyncio.Semaphore(20)

    async def one(task: str) -> str:
        async with gate:
            return (await client.spawn(SPOKE, "once", task)).agent_id

    return list(await asyncio.gather(*(one(t) for t in tasks)))


def _ledger(path: Path, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["cid"] in ids:
            runs[entry["cid"]].append(entry)
    return runs


def _check(
    final: dict[str, Any], codes: dict[str, int], runs: dict[str, list[dict[str, Any]]]
) -> None:
    """0 LOST, 0 run twice, every exit code and output tail as the agent left them."""
    states = Counter(a.state for a in final.values())
    lost = [i for i, a in final.items() if a.reason == "LOST"]
    assert not lost, f"{len(lost)} LOST; states {states}"
    for agent_id, agent in final.items():
        entries = runs[agent_id]
        starts = [e for e in entries if e["ev"] == "start"]
        ends = [e for e in entries if e["ev"] == "end"]
        assert len(starts) == 1, (agent_id, entries)
        assert len(ends) == 1, (agent_id, entries)
        assert ends[0]["how"] == "ok", (agent_id, entries)
        want = codes[agent_id]
        assert agent.exit_code == want, (agent_id, agent.exit_code, want)
        assert agent.state == (AgentState.SUCCEEDED if want == 0 else AgentState.FAILED), agent
        assert agent.attempt == 1
        assert f"begin {agent_id}\n" in agent.stdout_tail
        assert f'"summary": "end {agent_id}"' in agent.stdout_tail


async def _spawn_running(
    fed: Fed, after: list[float], ready: Path
) -> tuple[list[str], dict[str, int]]:
    """Spawn one agent per ``after``; return once every one is running, waiting for go."""
    os.mkdir(ready)
    tasks = [f"ready={ready} after={a} code={i % 3}" for i, a in enumerate(after)]
    ids = await _spawn_all(fed.client, tasks)
    codes = {agent_id: i % 3 for i, agent_id in enumerate(ids)}
    async with asyncio.timeout(60):  # every agent has started (its file; no RPCs)
        while len(os.listdir(ready)) < len(ids):  # noqa: ASYNC110 - files: nothing to await
            await asyncio.sleep(0.1)
    return ids, codes


def _go(ready: Path) -> float:
    """Let the agents run on: their end times count from now (the fault)."""
    now = time.time()
    (ready / "go.tmp").write_text(repr(now))
    (ready / "go.tmp").rename(ready / "go")
    return now


def _running_at(runs: dict[str, list[dict[str, Any]]], t: float) -> int:
    """How many agents had started and not ended at ``t`` (by their ledger)."""
    return sum(
        any(e["ev"] == "start" and e["t"] < t for e in r)
        and not any(e["ev"] == "end" and e["t"] < t for e in r)
        for r in runs.values()
    )


async def test_sigkill_and_restart_10s_later_loses_and_repeats_nothing(fed: Fed) -> None:
    # 100 running when spoked dies; they end 2, 4, ... 20 s later: 40 while it is down (10 s),
    # 50 after its restart.
    began = time.monotonic()
    ready = fed.ledger.parent / "ready-kill"
    ids, codes = await _spawn_running(fed, [2.0 + 2 * (i % 10) for i in range(AGENTS)], ready)
    print(f"100 running after {time.monotonic() - began:.1f} s")
    spoked = fed.fed.spoked(SPOKE)
    killed_at = _go(ready)
    await spoked.kill()
    await asyncio.sleep(DOWN_S)
    restarted_at = time.time()
    await spoked.start()
    final = await _until_all(fed.client, ids, lambda a: a.state in hc.FINAL_STATES, 60)
    runs = _ledger(fed.ledger, set(ids))
    assert _running_at(runs, killed_at + 1) == AGENTS  # all started, none ended, at the kill
    _check(final, codes, runs)
    print(f"all final {time.time() - restarted_at:.1f} s after the restart")
    ended = [e["t"] for r in runs.values() for e in r if e["ev"] == "end"]
    while_down = sum(killed_at < t < restarted_at for t in ended)
    after = sum(t > restarted_at for t in ended)
    assert while_down >= 20, (while_down, after)
    assert after >= 20, (while_down, after)
    assert not list(fed.state_dir.iterdir())  # every attempt's state removed once recorded


async def test_sigterm_upgrade_leaves_running_agents_running(fed: Fed) -> None:
    ready = fed.ledger.parent / "ready-term"
    ids, codes = await _spawn_running(fed, [3.0 + (i % 4) for i in range(AGENTS)], ready)
    spoked = fed.fed.spoked(SPOKE)
    termed_at = _go(ready)
    spoked.signal(signal.SIGTERM)
    async with asyncio.timeout(15):  # within its grace period: it does not wait for them
        while spoked.running:  # noqa: ASYNC110 - its exit is no event we may await unreaped
            await asyncio.sleep(0.05)
    stopped_at = time.time()
    await spoked.stop()  # reaps it
    print(f"spoked exited {stopped_at - termed_at:.1f} s after SIGTERM")
    await spoked.start()
    final = await _until_all(fed.client, ids, lambda a: a.state in hc.FINAL_STATES, 60)
    runs = _ledger(fed.ledger, set(ids))
    assert _running_at(runs, termed_at + 1) == AGENTS  # all started, none ended, at SIGTERM
    _check(final, codes, runs)  # none killed: each ran once, to its end ("ok")
    ended_later = sum(e["t"] > stopped_at for r in runs.values() for e in r if e["ev"] == "end")
    assert ended_later >= AGENTS // 2, ended_later  # they outlived the spoked that ran them
