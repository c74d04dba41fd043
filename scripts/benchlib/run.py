"""One benchmark run: start the cluster, run the rounds and the scale phase, write results."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import environment, harness, issue13, report, stats
from .clients import ReadySocket
from .cluster import Cluster
from .context import FULL, QUICK, Env
from .floors import floor_arms
from .ours import our_arms
from .rivals import rival_arms
from .scale import run_scale


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    rounds: int
    arms: tuple[str, ...]
    """Arm names, or groups: floor, ours, rival, scale. Empty: everything."""
    out: Path
    scale_max: int
    concurrency: int
    seed: int
    docs: Path | None
    """Where docs/benchmarks.md lives; None leaves the docs alone."""


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    num: tuple[str, str]
    den: tuple[str, str]
    target: float | None = None
    better: str = "le"
    """``le``: the ratio should be at most the target; ``ge``: at least."""


RATIOS = (
    Ratio("spawn_direct p50 / echo p50", ("spawn_direct", "p50"), ("echo_direct", "p50"), 1.6),
    Ratio(
        "spawn_direct throughput / echo throughput",
        ("spawn_direct", "tput"),
        ("echo_direct", "tput"),
        0.55,
        "ge",
    ),
    Ratio("spawn_hub p50 / echo p50", ("spawn_hub", "p50"), ("echo_direct", "p50"), 2.5),
    Ratio("spawn_hub p50 / relayed echo p50", ("spawn_hub", "p50"), ("echo_relay", "p50")),
    Ratio(
        "spawn_to_running p50 / bare Python spawn p50",
        ("spawn_to_running", "p50"),
        ("spawn_python", "p50"),
        1.2,
    ),
    Ratio("status_direct p50 / echo p50", ("status_direct", "p50"), ("echo_direct", "p50")),
    Ratio("status_hub p50 / relayed echo p50", ("status_hub", "p50"), ("echo_relay", "p50")),
    Ratio("relayed echo p50 / echo p50", ("echo_relay", "p50"), ("echo_direct", "p50")),
    Ratio("floor_signed p50 / echo p50", ("floor_signed", "p50"), ("echo_direct", "p50")),
    Ratio(
        "floor_signed throughput / echo throughput",
        ("floor_signed", "tput"),
        ("echo_direct", "tput"),
        better="ge",
    ),
    Ratio("spawn_direct p50 / floor_signed p50", ("spawn_direct", "p50"), ("floor_signed", "p50")),
    Ratio("spawn_direct p50 / celery p50", ("spawn_direct", "p50"), ("celery_apply_async", "p50")),
    Ratio("spawn_direct p50 / bullmq p50", ("spawn_direct", "p50"), ("bullmq_add", "p50")),
    Ratio(
        "spawn_direct throughput / celery throughput",
        ("spawn_direct", "tput"),
        ("celery_apply_async", "tput"),
    ),
    Ratio(
        "spawn_direct throughput / bullmq throughput",
        ("spawn_direct", "tput"),
        ("bullmq_add", "tput"),
    ),
)


def _metric(result: dict[str, Any], metric: str) -> float:
    if metric == "tput":
        return float(result.get("throughput", {}).get("ops_s", math.nan))
    return float(result["latency"][f"{metric}_ms"])


def _selected(arms: Sequence[harness.Arm], wanted: tuple[str, ...]) -> list[harness.Arm]:
    if not wanted:
        return list(arms)
    return [a for a in arms if a.name in wanted or a.kind in wanted]


def summarize(
    results: dict[str, list[dict[str, Any]]], arms: Sequence[harness.Arm]
) -> dict[str, Any]:
    """Per arm: median and range over rounds of every number, correctness summed."""
    out: dict[str, Any] = {}
    for arm in arms:
        rounds = results[arm.name]
        summary: dict[str, Any] = {
            "kind": arm.kind,
            "description": arm.description,
            "rounds": rounds,
        }
        for key in ("p50", "p90", "p99", "tput"):
            summary[key] = stats.spread([_metric(r, key) for r in rounds])
        roles = rounds[0]["cpu_us_per_op"].keys() if rounds else ()
        summary["cpu_us_per_op"] = {
            role: stats.spread([r["cpu_us_per_op"][role] for r in rounds]) for role in roles
        }
        if rounds and "redis_commands_per_op" in rounds[0]:
            summary["redis_commands_per_op"] = stats.spread(
                [r["redis_commands_per_op"] for r in rounds]
            )
            summary["redis_scripts_per_op"] = stats.spread(
                [r["redis_scripts_per_op"] for r in rounds]
            )
        summary["foreign_cpu_share"] = stats.spread(
            [r.get("foreign_cpu_share", math.nan) for r in rounds]
        )
        summary["correctness"] = {
            k: sum(r["correctness"][k] for r in rounds) for k in harness.CORRECTNESS_KEYS
        }
        out[arm.name] = summary
    return out


def ratios(results: dict[str, list[dict[str, Any]]], rounds: int) -> list[dict[str, Any]]:
    out = []
    for spec in RATIOS:
        if spec.num[0] not in results or spec.den[0] not in results:
            continue
        per_round = [
            _metric(results[spec.num[0]][r], spec.num[1])
            / _metric(results[spec.den[0]][r], spec.den[1])
            for r in range(rounds)
        ]
        spread = stats.spread(per_round)
        met = None
        if spec.target is not None and not math.isnan(spread["median"]):
            met = (
                spread["median"] <= spec.target
                if spec.better == "le"
                else spread["median"] >= spec.target
            )
        out.append(
            {
                "name": spec.name,
                "per_round": per_round,
                **spread,
                "target": spec.target,
                "better": spec.better,
                "met": met,
            }
        )
    return out


def fanout_fit(results: dict[str, list[dict[str, Any]]], rounds: int) -> dict[str, Any] | None:
    ns = sorted(int(k.split("_")[1]) for k in results if k.startswith("fanout_"))
    if len(ns) < 2:
        return None
    slopes, intercepts = [], []
    for r in range(rounds):
        ys = [results[f"fanout_{n}"][r]["latency"]["p50_ms"] for n in ns]
        slope, intercept = stats.linear_fit([float(n) for n in ns], ys)
        slopes.append(slope)
        intercepts.append(intercept)
    return {
        "n": ns,
        "slope_ms_per_spoke": stats.spread(slopes),
        "intercept_ms": stats.spread(intercepts),
    }


def scale_ratios(scale: dict[str, Any] | None) -> dict[str, Any] | None:
    if not scale or len(scale["levels"]) < 2:
        return None
    first, last = scale["levels"][0], scale["levels"][-1]
    out: dict[str, Any] = {"from": first["backlog"], "to": last["backlog"]}
    for key in ("enqueue", "pickup", "status"):
        out[key] = last[key]["p50_ms"] / first[key]["p50_ms"]
    out["target"] = 1.1
    out["met"] = all(out[k] <= 1.1 for k in ("enqueue", "pickup", "status"))
    return out


def _cancel_on_sigterm() -> None:
    """SIGTERM cancels the run, so ``finally`` still stops every child process (they run in
    their own sessions and would outlive us)."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def run(opts: Options) -> dict[str, Any]:
    sizes = QUICK if opts.quick else FULL
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = opts.out / f"run-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    sock_dir = Path(tempfile.mkdtemp(prefix="hsb-"))  # short: unix socket paths are limited
    ready = ReadySocket(sock_dir / "ready.sock")
    cluster = Cluster(out_dir / "cluster", max(sizes.fanout), ready.path)
    env = Env(cluster, ready, sizes, opts.concurrency)
    started = time.perf_counter()
    scale: dict[str, Any] | None = None
    _cancel_on_sigterm()
    try:
        ready.open()
        print(f"bench: starting the cluster under {out_dir}", file=sys.stderr, flush=True)
        await cluster.start(sizes.fanout)
        await env.open()
        arms = _selected([*floor_arms(env), *our_arms(env), *rival_arms(env)], opts.arms)
        ctx = harness.RoundContext(
            pids=cluster.pids,
            redis_urls=lambda: {
                **{f"redis:{n}": s.redis.url for n, s in cluster.sites.items()},
                "redis:hub": cluster.hub_redis.url if cluster.hub_redis else "",
            },
            concurrency=opts.concurrency,
        )
        results, orders = await harness.run_rounds(arms, opts.rounds, ctx, opts.seed)
        if not opts.arms or "scale" in opts.arms:
            scale = await run_scale(env, opts.scale_max)
    finally:
        await env.close()
        await cluster.stop()
        ready.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(out_dir / "cluster" / "redis", ignore_errors=True)
    doc: dict[str, Any] = {
        "schema": 1,
        "mode": "quick" if opts.quick else "full",
        "options": {**asdict(opts), "out": str(opts.out), "docs": str(opts.docs)},
        "sizes": asdict(sizes),
        "environment": environment.describe(),
        "request_bytes": env.request_size,
        "orders": orders,
        "arms": summarize(results, arms),
        "ratios": ratios(results, opts.rounds),
        "fanout_fit": fanout_fit(results, opts.rounds),
        "scale": scale,
        "scale_ratios": scale_ratios(scale),
        "issue13": issue13.table(results, scale),
        "elapsed_s": time.perf_counter() - started,
    }
    doc = _json_safe(doc)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
    report.write_plots(doc, out_dir)
    (out_dir / "benchmarks.md").write_text(report.markdown(doc, plot_dir="."))
    if opts.docs is not None:
        report.write_docs(doc, opts.docs)
    print(f"bench: results in {out_dir} ({doc['elapsed_s']:.0f} s)", file=sys.stderr, flush=True)
    return doc


def failures(doc: dict[str, Any]) -> list[str]:
    """Arms whose correctness counts are not clean (lost, duplicated or failed ops)."""
    return [
        f"{name}: " + ", ".join(f"{k} {c[k]}" for k in ("lost", "duplicates", "errors") if c[k])
        for name, arm in doc["arms"].items()
        if any((c := arm["correctness"])[k] for k in ("lost", "duplicates", "errors"))
    ]
