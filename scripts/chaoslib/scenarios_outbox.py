"""Chaos scenarios of the durable hub (issue 11): the outbox across a partition, and two
hubds on one Redis with one SIGKILLed mid-stream.

``outbox-deadlines``: the hub <-> spoke link is cut at the proxy for ``partition_s`` while
spawns arrive, half with a start deadline that ends during the cut and half with one after
it; one held agent is killed during the cut, and so is an agent that was running before it.
After the heal every late spawn ran exactly once, every early one ended EXPIRED/UNDELIVERED
and never ran, the held agent that was killed never ran, and the running one is KILLED
within seconds of the heal.

``two-hubds``: a second hubd on the hub's Redis; the client is given both addresses; the
first hubd is SIGKILLed mid-stream and not restarted. Every spawn is answered (the client
moves to the other hubd with the same command id) and exactly one agent runs per id.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hubspoke import client as hub_client

from . import faults
from .cluster import Cluster
from .ledger import read_ledger
from .scenarios import Driver, Outcome, Scale, Scenario, _conclude

__all__ = ["SCENARIOS"]

KILL_AFTER_HEAL_S = 15.0
"""How soon after the heal a kill held during the partition must have reached the agent."""


async def _state(client: hub_client.Client, spoke: str, agent: str) -> hub_client.AgentState:
    return (await client.get(agent, spoke)).state


async def _until_state(
    client: hub_client.Client,
    spoke: str,
    agent: str,
    state: hub_client.AgentState,
    timeout_s: float,
) -> float | None:
    """Seconds until ``agent`` is in ``state`` (None if it is not by ``timeout_s``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if await _state(client, spoke, agent) == state:
                return time.monotonic() - t0
        except hub_client.CallError:
            pass
        await asyncio.sleep(0.25)
    return None


async def outbox_deadlines(scale: Scale, root: Path, outcome: Outcome) -> None:
    # Held commands go out once the spoke's circuit lets calls through again: at most
    # circuit_open_s + probe_interval_s after the heal (30 + 5 s by default; 3 + 1 s here).
    fast = {"HUB_CIRCUIT_OPEN_S": "3", "HUB_PROBE_INTERVAL_S": "1"}
    cluster = Cluster(root, concurrency=4, via_proxy=True, hub_env=fast)
    timeline = faults.Timeline()
    cut_s = scale.partition_s
    count = 200 if scale.name == "full" else 40
    try:
        await cluster.start()
        async with cluster.client() as client:
            driver = Driver(cluster, client, "obx")
            running = driver.new_cid()
            await driver.spawn(running, "once", "sleep=600")
            await _until_state(client, cluster.spoke, running, hub_client.AgentState.RUNNING, 30)
            cut = asyncio.create_task(timeline.partition(cluster, cut_s))
            await asyncio.sleep(0.5)
            early: list[str] = []
            late: list[str] = []
            for i in range(count):
                # Early deadlines end well inside the cut; late ones long after it.
                if i % 2:
                    late.append(driver.launch("once", "sleep=0.2", start_within_s=3600.0))
                else:
                    early.append(driver.launch("once", "sleep=0.2", start_within_s=cut_s / 2))
                await asyncio.sleep(cut_s / (3 * count))
            await driver.drain()
            doomed = late.pop()
            killed = await client.kill(doomed, cluster.spoke)
            held_kill = await client.kill(running, cluster.spoke)
            await cut
            reached = await _until_state(
                client, cluster.spoke, running, hub_client.AgentState.KILLED, 60
            )
            await _conclude(outcome, driver, timeline, scale, limit=4)
            finals = driver.finals
            runs = read_ledger(cluster.ledger)
            ran: dict[str, int] = {}
            for r in runs:
                ran[r.cid] = ran.get(r.cid, 0) + 1
            bad_early = [
                c
                for c in early
                if ran.get(c) or (finals[c].state, finals[c].reason) != ("EXPIRED", "UNDELIVERED")
            ]
            bad_late = [c for c in late if ran.get(c) != 1 or finals[c].state != "SUCCEEDED"]
            kill_s = None if reached is None else round(reached, 2)
            outcome.extra.update(
                {
                    "early": len(early),
                    "late": len(late),
                    "early_not_expired_or_ran": bad_early[:12],
                    "late_not_run_once": bad_late[:12],
                    "held_kill_answered": {
                        "pending": killed.reason,
                        "running": "kill_pending" if held_kill.kill_pending else held_kill.reason,
                    },
                    "running_killed_after_heal_s": kill_s,
                }
            )
            outcome.expectations.update(
                {
                    "early deadlines: EXPIRED/UNDELIVERED, never ran": not bad_early,
                    "late deadlines: ran exactly once": not bad_late,
                    "held agent killed in the cut never ran": not ran.get(doomed)
                    and killed.reason == "KILLED_BEFORE_DELIVERY",
                    f"running agent KILLED within {KILL_AFTER_HEAL_S:g} s of the heal": reached
                    is not None
                    and reached <= KILL_AFTER_HEAL_S,
                }
            )
            outcome.notes.append(f"proxy cut {cut_s:g} s; {count} spawns during it")
    finally:
        await cluster.stop()


async def two_hubds(scale: Scale, root: Path, outcome: Outcome) -> None:
    cluster = Cluster(root, concurrency=8)
    timeline = faults.Timeline()
    try:
        await cluster.start()
        second = await cluster.federation.start_hub("hub-2")
        both = f"{cluster.hub_address},{second.address}"
        async with cluster.federation.client(12.0, hub=both) as client:
            driver = Driver(cluster, client, "two")

            def pick(_: int) -> tuple[str, str]:
                return "once", "sleep=0.2"

            async def kill_first() -> None:
                await asyncio.sleep(scale.fault_gap_s)
                t0 = time.time()
                pid = cluster.hubd.pid
                await cluster.hubd.kill()
                timeline.add("sigkill-hubd", t0, time.time(), f"pid {pid}, not restarted")

            seconds = 2 * scale.fault_gap_s + 2.0
            await asyncio.gather(driver.stream_for(seconds, 10.0, pick), kill_first())
            await _conclude(outcome, driver, timeline, scale, limit=8)
            v = outcome.verdict
            assert v is not None
            outcome.expectations["every spawn answered OK"] = v.acked == v.sent
            outcome.expectations["one agent per command id"] = v.duplicated == 0
    finally:
        await cluster.stop()


SCENARIOS: dict[str, Scenario] = {
    "outbox-deadlines": outbox_deadlines,
    "two-hubds": two_hubds,
}
