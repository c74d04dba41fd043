"""``scripts/bench --arms hub-cluster``: hub spawn throughput with the hub's state on one
Redis and on a local 3-primary Redis Cluster, in the same run (issue 11).

One spoke site (its own Redis, concurrency 1, agents that run 60 s, so spawns queue) and two
hubds of one hub identity dialling it: ``hub`` on a private redis-server, ``hub-cluster``
on an :class:`hubspoke.testing.EmbeddedRedisCluster` (``HUB_REDIS_URL=redis+cluster://``,
the same password file). Each round spawns ``spawns`` agents through each hubd in turn
(the order alternates), ``concurrency`` in flight, and records acknowledged spawns per
second. The spoke's side is the same for both arms; the difference is the hub's Redis
(admission script, agent index, audit log). Two cores run everything, so the cluster's
three servers compete with the hubd for CPU: the figure is a same-machine comparison, not
a cluster's capacity. ``results/hub-cluster-<stamp>/hub_cluster.json`` under ``--out``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hubspoke import testing

_RATE = "10000"
_BURST = "10000000"
_ARMS = ("one-redis", "cluster")


async def _burst(fed: testing.Federation, hub: str, spawns: int, concurrency: int) -> float:
    """Spawns acknowledged per second through ``hub``."""
    sem = asyncio.Semaphore(concurrency)
    async with fed.client(timeout_s=30.0, hub=hub) as client:

        async def one() -> None:
            async with sem:
                await client.spawn("spoke-1", "synthetic", "duration=60")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(spawns)))
        return spawns / (time.perf_counter() - started)


async def measure(*, rounds: int, spawns: int, concurrency: int) -> dict[str, Any]:
    """Start the federation and the cluster, run the rounds, stop everything."""
    with tempfile.TemporaryDirectory(prefix="hs-bench-cluster-") as tmp:
        root = Path(tmp)
        fed = testing.Federation(
            root / "fed",
            ["spoke-1"],
            spoke_env={
                "SPOKE_CONCURRENCY": "1",
                "SPOKE_MAX_QUEUE_DEPTH": "100000000",
                "SPOKE_MAX_QUEUED_PER_PRINCIPAL": "100000000",
                "SPOKE_RATE_PER_PRINCIPAL": _RATE,
            },
            hub_env={"HUB_RATE_PER_PRINCIPAL": _RATE, "HUB_RATE_BURST": _BURST},
        )
        cluster: testing.EmbeddedRedisCluster | None = None
        try:
            await fed.start()
            cluster = testing.EmbeddedRedisCluster(
                root / "cluster", password_file=fed.redis_password_file
            )
            await cluster.start()
            clustered = await fed.start_hub(
                "hub-cluster", env={"HUB_REDIS_URL": cluster.access.url}
            )
            hubs = {"one-redis": fed.hub_address, "cluster": clustered.address}
            await _burst(fed, hubs["one-redis"], 20, concurrency)  # warm both up
            await _burst(fed, hubs["cluster"], 20, concurrency)
            per_round: dict[str, list[float]] = {arm: [] for arm in _ARMS}
            for r in range(rounds):
                order = _ARMS if r % 2 == 0 else _ARMS[::-1]
                for arm in order:
                    per_round[arm].append(await _burst(fed, hubs[arm], spawns, concurrency))
        finally:
            await fed.stop()
            if cluster is not None:
                await cluster.stop()
    medians = {arm: statistics.median(v) for arm, v in per_round.items()}
    return {
        "rounds": rounds,
        "spawns_per_round": spawns,
        "concurrency": concurrency,
        "spawns_per_s": per_round,
        "median_spawns_per_s": medians,
        "cluster_vs_one_redis": medians["cluster"] / medians["one-redis"],
    }


def run(*, quick: bool, out: Path, concurrency: int) -> dict[str, Any]:
    """Measure and write ``hub_cluster.json``; print one line of results."""
    out_dir = out / f"hub-cluster-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds, spawns = (2, 100) if quick else (5, 500)
    print(f"bench: hub-cluster arm, {rounds} rounds of {spawns} spawns", file=sys.stderr)
    result = asyncio.run(measure(rounds=rounds, spawns=spawns, concurrency=concurrency))
    (out_dir / "hub_cluster.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["median_spawns_per_s"]
    print(
        f"bench: hub-cluster: one Redis {m['one-redis']:.0f} spawns/s, cluster "
        f"{m['cluster']:.0f} spawns/s ({result['cluster_vs_one_redis']:.2f}x)",
        file=sys.stderr,
        flush=True,
    )
    return result
