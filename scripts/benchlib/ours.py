"""Our verbs, measured from a client: signed spawn (direct, through the hub), spawn-to-running,
status (direct, through the hub), kill-to-gone and status fan-out over N spokes.

Correctness, per round: every acked spawn is in the spoke's records exactly once with its
bullmq job; agents that run reach SUCCEEDED (or KILLED, for kill-to-gone) exactly once, on
attempt 1, and sent their ready datagram once.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hubspoke.spoke.keys import QUEUE_NAME, SpokeKeys

from .cluster import READY_PROFILE, RUNNER, Site
from .context import SPAWN_SPOKE, Env, new_id
from .harness import Arm, Check
from .list_arm import list_arms

FINAL = {b"SUCCEEDED", b"FAILED", b"KILLED", b"TIMED_OUT", b"DEAD_LETTERED"}
SETTLE_S = 60.0


async def _records(site: Site, ids: list[str], *fields: str) -> list[list[Any]]:
    async with site.client() as r:
        pipe = r.pipeline(transaction=False)
        for a in ids:
            pipe.hmget(site.keys.agent(a), list(fields))
        return list(await pipe.execute())


def _stored_tracker(env: Env, site: Site) -> tuple[list[str], Callable[[], Awaitable[None]], Check]:
    """Acked ids, plus begin/check: each acked id has one record and one bullmq job."""
    acked: list[str] = []
    index0 = [0]

    async def begin() -> None:
        acked.clear()
        async with site.client() as r:
            index0[0] = await r.zcard(site.keys.agent_index)

    async def check() -> dict[str, int]:
        unique = list(dict.fromkeys(acked))
        async with site.client() as r:
            added = await r.zcard(site.keys.agent_index) - index0[0]
            pipe = r.pipeline(transaction=False)
            for a in unique:
                pipe.hget(site.keys.agent(a), "state")
                pipe.exists(f"{site.keys.prefix}:{QUEUE_NAME}:{SpokeKeys.job_id(a)}")
            rows = await pipe.execute()
        queued = sum(1 for s, j in zip(rows[::2], rows[1::2], strict=True) if s == b"QUEUED" and j)
        return {
            "ok": queued,
            "acked": len(acked),
            "executed": queued,
            "lost": len(unique) - queued,
            "duplicates": (len(acked) - len(unique)) + max(0, added - len(unique)),
        }

    return acked, begin, check


def _spawn_arms(env: Env) -> list[Arm]:
    assert env.spoke is not None
    assert env.hub is not None
    spoke, hub, site = env.spoke, env.hub, env.cluster.sites[SPAWN_SPOKE]
    direct_acked, direct_begin, direct_check = _stored_tracker(env, site)
    hub_acked, hub_begin, hub_check = _stored_tracker(env, site)

    async def direct(i: int) -> float:
        t0 = time.perf_counter()
        agent = await spoke.spawn(READY_PROFILE, env.task)
        elapsed = time.perf_counter() - t0
        direct_acked.append(agent.agent_id)
        return elapsed

    async def via_hub(i: int) -> float:
        t0 = time.perf_counter()
        agent = await hub.spawn(SPAWN_SPOKE, READY_PROFILE, env.task)
        elapsed = time.perf_counter() - t0
        hub_acked.append(agent.agent_id)
        return elapsed

    s = env.sizes
    spoke_roles = {"spoke": [f"spoke:{SPAWN_SPOKE}"], "redis": [f"redis:{SPAWN_SPOKE}"]}
    hub_roles = {**spoke_roles, "hub": ["hub:main"], "redis": [f"redis:{SPAWN_SPOKE}", "redis:hub"]}
    return [
        Arm(
            "spawn_direct",
            "ours",
            "signed SpawnAgent to the spoke, acked once stored (record + bullmq job, AOF)",
            direct,
            s.rpc_lat,
            s.rpc_tput,
            roles=spoke_roles,
            redis=spoke_roles["redis"],
            begin=direct_begin,
            check=direct_check,
        ),
        Arm(
            "spawn_hub",
            "ours",
            "the same spawn through hubd (verify, nonce, relay, index)",
            via_hub,
            s.rpc_lat,
            s.rpc_tput,
            roles=hub_roles,
            redis=hub_roles["redis"],
            begin=hub_begin,
            check=hub_check,
        ),
    ]


def _status_arms(env: Env) -> list[Arm]:
    assert env.spoke is not None
    assert env.hub is not None
    spoke, hub = env.spoke, env.hub
    pool = env.status_pool
    rng = random.Random(5)  # noqa: S311 - which agent to read, not a secret
    wrong = [0]

    async def begin() -> None:
        wrong[0] = 0

    async def direct(i: int) -> float:
        agent_id = rng.choice(pool)
        t0 = time.perf_counter()
        agent = await spoke.get(agent_id)
        elapsed = time.perf_counter() - t0
        wrong[0] += agent.agent_id != agent_id
        return elapsed

    async def via_hub(i: int) -> float:
        agent_id = rng.choice(pool)
        t0 = time.perf_counter()
        agent = await hub.get(agent_id)
        elapsed = time.perf_counter() - t0
        wrong[0] += agent.agent_id != agent_id
        return elapsed

    async def check() -> dict[str, int]:
        return {"lost": wrong[0]}

    s = env.sizes
    spoke_roles = {"spoke": [f"spoke:{SPAWN_SPOKE}"], "redis": [f"redis:{SPAWN_SPOKE}"]}
    hub_roles = {**spoke_roles, "hub": ["hub:main"], "redis": [f"redis:{SPAWN_SPOKE}", "redis:hub"]}
    return [
        Arm(
            "status_direct",
            "ours",
            "signed GetAgent to the spoke",
            direct,
            s.rpc_lat,
            s.rpc_tput,
            roles=spoke_roles,
            redis=spoke_roles["redis"],
            begin=begin,
            check=check,
        ),
        Arm(
            "status_hub",
            "ours",
            "GetAgent by bare id through hubd (agent index lookup, relay)",
            via_hub,
            s.rpc_lat,
            s.rpc_tput,
            roles=hub_roles,
            redis=hub_roles["redis"],
            begin=begin,
            check=check,
        ),
    ]


async def _settle(site: Site, ids: list[str]) -> list[list[Any]]:
    """The agents' (state, attempt) once all are final, or as they are after SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        rows = await _records(site, ids, "state", "attempt", "create_ms", "start_ms")
        if all(r[0] in FINAL for r in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


def _runner_arms(env: Env) -> list[Arm]:
    assert env.runner is not None
    runner, site, ready = env.runner, env.cluster.sites[RUNNER], env.ready
    run_acked: list[str] = []
    kill_acked: list[str] = []
    sent_wall: dict[str, float] = {}
    settled: dict[str, list[list[Any]]] = {}

    async def to_running(i: int) -> float:
        agent_id = new_id()
        fut = ready.expect(agent_id)
        t0 = asyncio.get_running_loop().time()
        sent_wall[agent_id] = time.time()
        await runner.spawn(READY_PROFILE, agent_id, command_id=agent_id)
        run_acked.append(agent_id)
        return await asyncio.wait_for(fut, 30) - t0

    def breakdown() -> dict[str, float]:
        """Medians (ms) of: client send → record stored, stored → spoke exec'd the agent
        (RUNNING written), exec → the agent's ready datagram. Wall clocks, ms resolution."""
        parts: dict[str, list[float]] = {
            "send_to_stored": [],
            "stored_to_exec": [],
            "exec_to_ready": [],
        }
        for agent_id, row in zip(run_acked, settled.get("run", []), strict=False):
            create_ms, start_ms = row[2], row[3]
            if not create_ms or not start_ms or agent_id not in ready.wall:
                continue
            create, start = int(create_ms) / 1000, int(start_ms) / 1000
            parts["send_to_stored"].append((create - sent_wall[agent_id]) * 1000)
            parts["stored_to_exec"].append((start - create) * 1000)
            parts["exec_to_ready"].append((ready.wall[agent_id] - start) * 1000)
        return {k: statistics.median(v) if v else math.nan for k, v in parts.items()}

    async def kill_to_gone(i: int) -> float:
        agent_id = new_id()
        fut = ready.expect(agent_id)
        await runner.spawn(READY_PROFILE, f"{agent_id} 120", command_id=agent_id)
        kill_acked.append(agent_id)
        await asyncio.wait_for(fut, 30)
        pid = await _running_pid(site, agent_id)
        t0 = time.perf_counter()
        await runner.kill(agent_id)
        # No event tells us a process we did not start is gone: poll /proc.
        while _exists(pid):  # noqa: ASYNC110 - polling /proc, see above
            await asyncio.sleep(0.001)
        return time.perf_counter() - t0

    def tracker(
        acked: list[str], want: bytes, key: str
    ) -> tuple[Callable[[], Awaitable[None]], Check]:
        async def begin() -> None:
            acked.clear()

        async def check() -> dict[str, int]:
            rows = await _settle(site, acked)
            settled[key] = rows
            good = sum(1 for st, att, *_ in rows if st == want and att == b"1")
            reruns = sum(1 for _, att, *_ in rows if att not in (b"0", b"1", None))
            twice = sum(1 for a in acked if ready.seen.get(a, 0) > 1)
            return {
                "ok": good,
                "acked": len(acked),
                "executed": good,
                "lost": len(acked) - good,
                "duplicates": reruns + twice,
            }

        return begin, check

    run_begin, run_check = tracker(run_acked, b"SUCCEEDED", "run")
    kill_begin, kill_check = tracker(kill_acked, b"KILLED", "kill")
    roles = {"spoke": [f"spoke:{RUNNER}"], "redis": [f"redis:{RUNNER}"]}
    return [
        Arm(
            "spawn_to_running",
            "ours",
            "signed spawn to the live spoke until the Python agent's ready datagram",
            to_running,
            env.sizes.run_lat,
            roles=roles,
            redis=roles["redis"],
            begin=run_begin,
            check=run_check,
            extras=breakdown,
        ),
        Arm(
            "kill_to_gone",
            "ours",
            "signed KillAgent of a running agent until its process no longer exists",
            kill_to_gone,
            env.sizes.kill_lat,
            warmup=1,
            roles=roles,
            redis=roles["redis"],
            begin=kill_begin,
            check=kill_check,
        ),
    ]


def _exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def _running_pid(site: Site, agent_id: str) -> int:
    """Wait (untimed) until the record says RUNNING with a pid."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ((state, pid),) = await _records(site, [agent_id], "state", "pid")
        if state == b"RUNNING" and pid:
            return int(pid)
        await asyncio.sleep(0.005)
    raise RuntimeError(f"agent {agent_id} never reached RUNNING")


def _fanout_arms(env: Env) -> list[Arm]:
    arms = []
    for n, client in env.fan_hubs.items():
        wrong = [0]

        async def begin(wrong: list[int] = wrong) -> None:
            wrong[0] = 0

        async def op(i: int, n: int = n, client: Any = client, wrong: list[int] = wrong) -> float:
            t0 = time.perf_counter()
            result = await client.list(page_size=10)
            elapsed = time.perf_counter() - t0
            if result.unreachable_spokes or len(result.agents) != 10 * n:
                wrong[0] += 1
            return elapsed

        async def check(wrong: list[int] = wrong) -> dict[str, int]:
            return {"lost": wrong[0]}

        names = [f"spoke:spoke-{i:02d}" for i in range(1, n + 1)]
        redis = [f"redis:spoke-{i:02d}" for i in range(1, n + 1)]
        arms.append(
            Arm(
                f"fanout_{n}",
                "ours",
                f"ListAgents (page of 10 per spoke) through hubd over {n} spoke(s)",
                op,
                env.sizes.fan_lat,
                roles={"hub": [f"hub:fan-{n}"], "spoke": names, "redis": [*redis, "redis:hub"]},
                redis=[*redis, "redis:hub"],
                begin=begin,
                check=check,
            )
        )
    return arms


def our_arms(env: Env) -> list[Arm]:
    return [
        *_spawn_arms(env),
        *_status_arms(env),
        *list_arms(env),
        *_runner_arms(env),
        *_fanout_arms(env),
    ]
