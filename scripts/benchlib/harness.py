"""Arms and rounds: every arm runs once per round, in a fresh random order each round.

One arm, one round:

1. ``begin`` (untimed: reset what the correctness check looks at) and a few warm-up ops;
2. CPU time of every process in the arm's roles and Redis ``INFO commandstats``, sampled;
3. latency: ``lat_n`` ops one after another, each timed by the client;
4. throughput: ``tput_n`` ops with ``concurrency`` in flight, ops/s over the wall time;
5. the same samples again (CPU per op = delta / (lat_n + tput_n)), then ``check``.

An op returns the seconds it measured itself, so an op with untimed setup (kill-to-gone
first starts the agent it kills) reports only its own part.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from . import stats
from .procs import cpu_seconds, machine_busy_seconds

Op = Callable[[int], Awaitable[float]]
Check = Callable[[], Awaitable[dict[str, int]]]

CORRECTNESS_KEYS = ("ok", "acked", "executed", "lost", "duplicates", "errors")


@dataclass
class Arm:
    """One thing measured: an op, how often, and which processes it costs."""

    name: str
    kind: str
    """``floor``, ``ours`` or ``rival``."""
    description: str
    op: Op
    lat_n: int
    tput_n: int = 0
    warmup: int = 3
    roles: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Role (``hub``, ``spoke``, ``redis``, …) → process names from ``Cluster.pids``."""
    redis: Sequence[str] = ()
    """Process names of the Redis servers whose commands count for this arm."""
    begin: Callable[[], Awaitable[None]] | None = None
    check: Check | None = None
    tput_op: Op | None = None
    """The op of the throughput phase, when it differs (a blocking client in threads)."""
    extras: Callable[[], dict[str, float]] | None = None
    """Extra numbers for the report, read after ``check`` (e.g. a latency breakdown)."""


@dataclass
class RoundContext:
    """What the harness needs from the cluster while measuring."""

    pids: Callable[[], dict[str, int]]
    redis_urls: Callable[[], dict[str, str]]
    concurrency: int


async def _commandstats(urls: Mapping[str, str], names: Sequence[str]) -> tuple[int, int]:
    """(commands, script calls) served so far by the named Redis servers."""
    calls = scripts = 0
    for name in names:
        async with aioredis.Redis.from_url(urls[name]) as r:
            info: dict[str, Any] = await r.info("commandstats")
        for key, value in info.items():
            n = int(value["calls"])
            if key in ("cmdstat_info", "cmdstat_client"):
                continue
            calls += n
            if key in ("cmdstat_evalsha", "cmdstat_eval"):
                scripts += n
    return calls, scripts


def _cpu(pids: Mapping[str, int], roles: Mapping[str, Sequence[str]]) -> dict[str, float]:
    out = {"client": cpu_seconds(os.getpid())}
    for role, names in roles.items():
        out[role] = sum(cpu_seconds(pids[n]) for n in names if n in pids)
    return out


def _ours(pids: Mapping[str, int]) -> float:
    """CPU seconds of this process, every process of the cluster, and their reaped children
    (the agents)."""
    total = cpu_seconds(os.getpid(), children=True)
    used = (cpu_seconds(p, children=True) for p in pids.values())
    return total + sum(c for c in used if not math.isnan(c))


async def _run_ops(op: Op, indices: range, errors: list[BaseException]) -> list[float]:
    out: list[float] = []
    for i in indices:
        try:
            out.append(await op(i))
        except Exception as exc:
            errors.append(exc)
    return out


async def _throughput(
    op: Op, start: int, n: int, concurrency: int, errors: list[BaseException]
) -> float:
    todo = iter(range(start, start + n))

    async def worker() -> None:
        for i in todo:
            try:
                await op(i)
            except Exception as exc:
                errors.append(exc)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    elapsed = time.perf_counter() - t0
    return n / elapsed if elapsed > 0 else math.nan


async def run_arm(arm: Arm, ctx: RoundContext) -> dict[str, Any]:
    """Measure one arm once; the result is JSON-ready."""
    errors: list[BaseException] = []
    if arm.begin is not None:
        await arm.begin()
    await _run_ops(arm.op, range(arm.warmup), errors)
    warmup_errors = len(errors)
    pids, urls = ctx.pids(), ctx.redis_urls()
    cpu0 = _cpu(pids, arm.roles)
    ours0, busy0 = _ours(pids), machine_busy_seconds()
    cmd0 = await _commandstats(urls, arm.redis)
    t0 = time.perf_counter()
    start = arm.warmup
    lat = await _run_ops(arm.op, range(start, start + arm.lat_n), errors)
    result: dict[str, Any] = {"latency": stats.latency_summary(lat)}
    if arm.tput_n:
        ops_s = await _throughput(
            arm.tput_op or arm.op, start + arm.lat_n, arm.tput_n, ctx.concurrency, errors
        )
        result["throughput"] = {"ops_s": ops_s, "n": arm.tput_n, "concurrency": ctx.concurrency}
    wall = time.perf_counter() - t0
    cpu1 = _cpu(pids, arm.roles)
    ours1, busy1 = _ours(pids), machine_busy_seconds()
    cmd1 = await _commandstats(urls, arm.redis)
    ops = arm.lat_n + arm.tput_n
    result["cpu_us_per_op"] = {k: (cpu1[k] - cpu0[k]) / ops * 1e6 for k in cpu0}
    if arm.redis:
        result["redis_commands_per_op"] = (cmd1[0] - cmd0[0]) / ops
        result["redis_scripts_per_op"] = (cmd1[1] - cmd0[1]) / ops
    result["wall_s"] = wall
    # CPU the machine spent on processes that are not ours (other work on the machine):
    # flags a noisy round. Agents count as ours once reaped; one still running does not.
    foreign = (busy1 - busy0) - (ours1 - ours0)
    result["foreign_cpu_share"] = max(foreign, 0.0) / (wall * (os.cpu_count() or 1))
    correctness = {k: 0 for k in CORRECTNESS_KEYS}
    checked = await arm.check() if arm.check is not None else {}
    correctness.update(checked)
    if "ok" not in checked:
        # Reads: every counted op that raised nothing and was not wrong (``lost``).
        correctness["ok"] = ops - (len(errors) - warmup_errors) - correctness["lost"]
    correctness["errors"] = len(errors)
    result["correctness"] = correctness
    if arm.extras is not None:
        result["extras"] = arm.extras()
    if errors:
        result["first_error"] = f"{type(errors[0]).__name__}: {errors[0]}"[:300]
    return result


async def run_rounds(
    arms: Sequence[Arm], rounds: int, ctx: RoundContext, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], list[list[str]]]:
    """Every arm once per round, shuffled per round. Returns results and the orders used."""
    rng = random.Random(seed)  # noqa: S311 - the arm order, not a secret
    results: dict[str, list[dict[str, Any]]] = {a.name: [] for a in arms}
    orders: list[list[str]] = []
    for r in range(rounds):
        order = list(arms)
        rng.shuffle(order)
        orders.append([a.name for a in order])
        for arm in order:
            t0 = time.perf_counter()
            res = await run_arm(arm, ctx)
            res["round"] = r
            results[arm.name].append(res)
            lat = res["latency"]
            tput = res.get("throughput", {}).get("ops_s")
            extra = f" {tput:8.0f} ops/s" if tput else ""
            print(
                f"bench: round {r + 1}/{rounds} {arm.name:<22} p50 {lat['p50_ms']:8.3f} ms"
                f"{extra}  ({time.perf_counter() - t0:4.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            bad = {k: res["correctness"][k] for k in ("lost", "duplicates", "errors")}
            if any(bad.values()):
                print(
                    f"bench:   {arm.name}: {bad}; first error: {res.get('first_error')}",
                    file=sys.stderr,
                    flush=True,
                )
    return results, orders
