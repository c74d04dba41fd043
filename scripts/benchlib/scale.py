"""Backlog scale: how enqueue, pickup and status behave with B agents waiting.

The ``scale`` spoke (concurrency 1) runs on its own Redis, with its queue paused. For each
backlog B, ascending and cumulative:

* fill to B waiting agents (priority 1) through ``hubspoke.spoke.queue.AgentQueue.create`` from this
  process: the spoke's own storage code and data layout, without a gRPC call per agent
  (signed RPCs would make filling 1M take most of an hour on 2 cores);
* Redis ``used_memory`` per queued agent, from an empty keyspace;
* enqueue: signed SpawnAgent RPCs (they join the backlog); status: signed GetAgent of random
  backlog agents, and the first ListAgents page;
* pickup: a priority-10 agent is spawned while paused, then the queue is resumed; the time
  from resume to the agent's ready datagram (the queue is paused again right after);
* restart: stop spoked and Redis (SIGTERM flushes the AOF), then time Redis until it answers
  PING (the AOF is loaded) and spoked until it serves (it re-checks every QUEUED record).
* the restarted spoked's start-up scan (spoke/start_up_scan.py: since issue 13's third round
  only the index of two-step writes, plus one scan of every record per site after the schema
  1 -> 2 step) is waited for before the next level is measured, and the wait reported
  (``scan_wait_s``): when it read every record, status at 1M queued read 1.41x its 1k cost
  during the scan and 1.01x after it;
* so is any append-only-file rewrite Redis runs after the fill (``aof_rewrite_wait_s``): a
  rewrite of a 1.6 GiB AOF shares the two cores for tens of seconds, and one measured pickup
  at 1M queued at 4.4x its 1k cost while it ran (0.92x in the next run, after it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import random
import sys
import time
from typing import Any

from hubspoke import commands
from hubspoke.gen.federation.v1 import command_pb2
from hubspoke.spoke.model import SpawnRequest
from hubspoke.spoke.queue import AgentQueue

from . import stats
from .cluster import READY_PROFILE, SCALE
from .context import Env, new_id

FILL_CONCURRENCY = 32
RESTART_TIMEOUT_S = 3600.0
SCAN_WAIT_MAX_S = 900.0
AOF_WAIT_MAX_S = 900.0
"""The longest wait for the spoke's start-up scan before a level is measured anyway."""


def _log(msg: str) -> None:
    print(f"bench: scale: {msg}", file=sys.stderr, flush=True)


async def _fill(env: Env, queue: AgentQueue, count: int, ids: list[str]) -> float:
    """Queue ``count`` more agents; return agents stored per second."""
    key = env.cluster.operator
    assert key is not None
    todo = iter(range(count))

    async def worker() -> None:
        for _ in todo:
            agent_id = new_id()
            cmd = commands.build_command(
                issuer=key.name, audience=SCALE, command_id=agent_id, validity=dt.timedelta(hours=1)
            )
            cmd.spawn_agent.CopyFrom(
                command_pb2.SpawnAgentBody(profile=READY_PROFILE, task=agent_id)
            )
            signed = commands.sign_command(cmd, key)
            req = SpawnRequest(
                agent_id=agent_id,
                issuer=key.name,
                profile=READY_PROFILE,
                task=agent_id,
                priority=1,
                timeout_ms=600_000,
                max_attempts=1,
                labels={},
                digest=hashlib.sha256(agent_id.encode()).hexdigest(),
                expire_ms=int((time.time() + 3600) * 1000),
                envelope=signed.SerializeToString(),
            )
            await queue.create(req, 10**9)
            ids.append(agent_id)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(FILL_CONCURRENCY)))
    return count / max(time.perf_counter() - t0, 1e-9)


async def _timed(n: int, fn: Any) -> dict[str, float]:
    samples = []
    for i in range(n):
        samples.append(await fn(i))
    return stats.latency_summary(samples)


async def _wait_final(queue: AgentQueue, agent_id: str) -> None:
    async with asyncio.timeout(60):
        while not (await queue.records.get(agent_id)).state.final:  # noqa: ASYNC110 - state in Redis
            await asyncio.sleep(0.01)


async def _measure(env: Env, queue: AgentQueue, ids: list[str], n: int) -> dict[str, Any]:
    cluster = env.cluster
    site = cluster.sites[SCALE]
    out: dict[str, Any] = {}
    rng = random.Random(len(ids))  # noqa: S311 - which agent to read
    async with cluster.direct(SCALE) as client:

        async def enqueue(i: int) -> float:
            t0 = time.perf_counter()
            agent = await client.spawn(READY_PROFILE, new_id(), priority=1)
            elapsed = time.perf_counter() - t0
            ids.append(agent.agent_id)
            return elapsed

        async def status(i: int) -> float:
            agent_id = rng.choice(ids)
            t0 = time.perf_counter()
            await client.get(agent_id)
            return time.perf_counter() - t0

        async def pickup(i: int) -> float:
            probe = new_id()
            fut = env.ready.expect(probe)
            await client.spawn(READY_PROFILE, probe, priority=10, command_id=probe)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await queue.jobs.resume()
            t1 = await asyncio.wait_for(fut, 60)
            await queue.jobs.pause()
            await _wait_final(queue, probe)
            return t1 - t0

        for _ in range(3):
            await enqueue(0)
            await status(0)
        out["enqueue"] = await _timed(n, enqueue)
        out["status"] = await _timed(n, status)
        out["pickup"] = await _timed(max(3, n // 3), pickup)
    async with site.client() as r:
        info = await r.info("memory")
        out["agents"] = int(await r.zcard(site.keys.agent_index))
        out["used_memory"] = int(info["used_memory"])
    return out


async def _restart(env: Env) -> dict[str, float]:
    cluster = env.cluster
    site = cluster.sites[SCALE]
    await cluster.stop_spoke(SCALE)
    await site.redis.stop(grace=300)
    aof = site.redis.data_dir / "appendonly.aof"
    t0 = time.perf_counter()
    # Loading a 1M-agent AOF takes tens of seconds: far past the default PING wait.
    site.redis.start_timeout = RESTART_TIMEOUT_S
    await site.redis.start()
    redis_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert site.daemon is not None
    await site.daemon.start(timeout_s=RESTART_TIMEOUT_S)
    spoke_s = time.perf_counter() - t0
    return {
        "redis_aof_load_s": redis_s,
        "spoke_start_s": spoke_s,
        "aof_bytes": float(aof.stat().st_size if aof.exists() else 0),
    }


async def _wait_start_up_scan(env: Env) -> float:
    """Wait until the scale spoke's latest start-up scan ended (its log has a ``requeue_done``
    or ``requeue_failed`` line for every start, each start's ``event_loop`` line); seconds
    waited."""
    log = env.cluster.federation.logs / f"{SCALE}.log"
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < SCAN_WAIT_MAX_S:
        text = log.read_text(errors="replace")
        ended = text.count('"requeue_done"') + text.count('"requeue_failed"')
        if ended >= text.count('"event": "event_loop"'):
            break
        await asyncio.sleep(0.5)
    else:
        _log(f"the spoke's start-up scan still runs after {SCAN_WAIT_MAX_S:.0f} s")
    return time.perf_counter() - t0


async def _wait_aof_rewrite(env: Env) -> float:
    """Wait until the scale site's Redis runs no append-only-file rewrite and has none
    scheduled (``INFO persistence``); seconds waited."""
    t0 = time.perf_counter()
    async with env.cluster.sites[SCALE].client() as r:
        while time.perf_counter() - t0 < AOF_WAIT_MAX_S:
            info = await r.info("persistence")
            if not int(info.get("aof_rewrite_in_progress", 0)) and not int(
                info.get("aof_rewrite_scheduled", 0)
            ):
                break
            await asyncio.sleep(0.5)
        else:
            _log(f"Redis still rewrites its AOF after {AOF_WAIT_MAX_S:.0f} s")
    return time.perf_counter() - t0


async def run_scale(env: Env, scale_max: int) -> dict[str, Any]:
    """Measure every backlog size up to ``scale_max``; returns JSON-ready results."""
    cluster = env.cluster
    site = cluster.sites[SCALE]
    sizes = [b for b in env.sizes.scale if b <= scale_max] or [min(env.sizes.scale)]
    await cluster.start_spoke(SCALE)
    queue = AgentQueue(site.redis.url, SCALE, op_timeout_s=60)
    levels: list[dict[str, Any]] = []
    try:
        await queue.jobs.pause()
        async with site.client() as r:
            base_memory = int((await r.info("memory"))["used_memory"])
        ids: list[str] = []
        for backlog in sizes:
            want = backlog - len(ids)
            t0 = time.perf_counter()
            rate = await _fill(env, queue, max(want, 0), ids) if want > 0 else 0.0
            _log(f"backlog {backlog}: filled {want} in {time.perf_counter() - t0:.1f} s")
            scan_wait_s = await _wait_start_up_scan(env)
            _log(f"backlog {backlog}: waited {scan_wait_s:.1f} s for the spoke's start-up scan")
            aof_wait_s = await _wait_aof_rewrite(env)
            _log(f"backlog {backlog}: waited {aof_wait_s:.1f} s for Redis's AOF rewrite")
            level = await _measure(env, queue, ids, env.sizes.scale_probe)
            level["scan_wait_s"] = scan_wait_s
            level["aof_rewrite_wait_s"] = aof_wait_s
            level["backlog"] = backlog
            level["fill_per_s"] = rate
            level["bytes_per_agent"] = (level["used_memory"] - base_memory) / max(
                level["agents"], 1
            )
            await queue.close()
            level["restart"] = await _restart(env)
            queue = AgentQueue(site.redis.url, SCALE, op_timeout_s=60)
            _log(
                f"backlog {backlog}: enqueue p50 {level['enqueue']['p50_ms']:.2f} ms, pickup p50 "
                f"{level['pickup']['p50_ms']:.2f} ms, status p50 "
                f"{level['status']['p50_ms']:.2f} ms, {level['bytes_per_agent']:.0f} B/agent, "
                "restart redis "
                f"{level['restart']['redis_aof_load_s']:.2f} s + spoke "
                f"{level['restart']['spoke_start_s']:.2f} s"
            )
            levels.append(level)
    finally:
        await queue.close()
        await cluster.stop_spoke(SCALE)
    return {"levels": levels, "scale_max": scale_max, "pid": os.getpid()}
