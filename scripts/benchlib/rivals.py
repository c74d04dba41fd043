"""What users would pick instead, on the same Redis as our spawn arms: Celery's
``apply_async`` and bullmq-py's ``Queue.add`` (the ``[bench]`` extra). Neither signs,
verifies or crosses a gRPC hop; both are in-process client libraries writing to Redis.

Celery is synchronous: its latency is measured with direct calls, its throughput with
``concurrency`` threads (its producer pool bounds how many really run at once).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import redis.asyncio as aioredis

from hubspoke.spoke.backend import bullmq_client
from hubspoke.spoke.jobs import priority_to_bullmq

from .context import SPAWN_SPOKE, Env, new_id
from .harness import Arm

CELERY_QUEUE = "bench-celery"
BULLMQ_QUEUE = "bench-bullmq"


def _celery_arm(env: Env) -> Arm | None:
    try:
        from celery import Celery
    except ImportError:
        return None
    url = env.cluster.sites[SPAWN_SPOKE].redis.url
    app = Celery("bench", broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=CELERY_QUEUE,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
    )

    @app.task(name="bench.agent")  # type: ignore[untyped-decorator]  # celery is untyped
    def agent(task: str) -> None:  # pragma: no cover - no worker runs it
        del task

    pool = ThreadPoolExecutor(max_workers=env.concurrency, thread_name_prefix="celery")
    env.stack.callback(pool.shutdown)
    env.stack.callback(app.close)
    acked: list[str] = []
    redis = aioredis.Redis.from_url(url)
    env.stack.push_async_callback(redis.aclose)

    def send() -> float:
        task_id = new_id()
        t0 = time.perf_counter()
        agent.apply_async(args=(env.task,), task_id=task_id)
        elapsed = time.perf_counter() - t0
        acked.append(task_id)
        return elapsed

    async def op(i: int) -> float:
        return send()

    async def threaded(i: int) -> float:
        return await asyncio.get_running_loop().run_in_executor(pool, send)

    async def lists() -> list[bytes]:
        # kombu keeps one list per priority step: the queue name, then name + separator + step.
        return [k async for k in redis.scan_iter(match=f"{CELERY_QUEUE}*")]

    async def begin() -> None:
        acked.clear()
        for key in await lists():
            await redis.delete(key)

    async def check() -> dict[str, int]:
        messages: list[bytes] = []
        for key in await lists():
            # redis-py types lrange as "sync or async"; this client is the async one.
            messages += cast("list[bytes]", await redis.lrange(key, 0, -1))
        ids = [json.loads(m)["headers"]["id"] for m in messages]
        unique = set(acked)
        return {
            "ok": len(unique & set(ids)),
            "acked": len(acked),
            "executed": len(unique & set(ids)),
            "lost": len(unique - set(ids)),
            "duplicates": len(ids) - len(set(ids)),
        }

    name = f"redis:{SPAWN_SPOKE}"
    return Arm(
        "celery_apply_async",
        "rival",
        "Celery apply_async to the same Redis (kombu redis transport)",
        op,
        env.sizes.rpc_lat,
        env.sizes.rpc_tput,
        roles={"redis": [name]},
        redis=[name],
        begin=begin,
        check=check,
        tput_op=threaded,
    )


def _bullmq_arm(env: Env) -> Arm:
    from bullmq import Queue

    url = env.cluster.sites[SPAWN_SPOKE].redis.url
    conn = bullmq_client(url)
    queue = Queue(BULLMQ_QUEUE, {"connection": conn})
    env.stack.push_async_callback(conn.aclose)
    env.stack.push_async_callback(queue.close)
    acked: list[str] = []
    plain = aioredis.Redis.from_url(url)
    env.stack.push_async_callback(plain.aclose)
    base = [0]

    async def op(i: int) -> float:
        job_id = f"cmd-{new_id()}"
        opts: dict[str, Any] = {"jobId": job_id, "priority": priority_to_bullmq(5), "attempts": 1}
        t0 = time.perf_counter()
        await queue.add("agent", {"agent_id": job_id, "task": env.task}, opts)
        elapsed = time.perf_counter() - t0
        acked.append(job_id)
        return elapsed

    async def begin() -> None:
        acked.clear()
        base[0] = await plain.zcard(f"bull:{BULLMQ_QUEUE}:prioritized")

    async def check() -> dict[str, int]:
        unique = list(dict.fromkeys(acked))
        pipe = plain.pipeline(transaction=False)
        for j in unique:
            pipe.exists(f"bull:{BULLMQ_QUEUE}:{j}")
        found = sum(await pipe.execute())
        added = await plain.zcard(f"bull:{BULLMQ_QUEUE}:prioritized") - base[0]
        return {
            "ok": found,
            "acked": len(acked),
            "executed": found,
            "lost": len(unique) - found,
            "duplicates": (len(acked) - len(unique)) + max(0, added - len(unique)),
        }

    name = f"redis:{SPAWN_SPOKE}"
    return Arm(
        "bullmq_add",
        "rival",
        "bullmq-py Queue.add (jobId, priority) to the same Redis",
        op,
        env.sizes.rpc_lat,
        env.sizes.rpc_tput,
        roles={"redis": [name]},
        redis=[name],
        begin=begin,
        check=check,
    )


def rival_arms(env: Env) -> list[Arm]:
    celery = _celery_arm(env)
    return [*([celery] if celery is not None else []), _bullmq_arm(env)]
