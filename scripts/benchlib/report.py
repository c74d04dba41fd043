"""Render a run: ``benchmarks.md`` (tables, environment, notes) and PNG plots (Agg backend)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from . import federation_report, issue13, notes
from .fmt import DASH, fmt, num, span

PLOTS = ("latency.png", "ratios.png", "cpu.png", "fanout.png", "scale.png")
_KIND_COLOR = {"floor": "#8c8c8c", "ours": "#1f77b4", "rival": "#ff7f0e"}
_ROLES = ("client", "hub", "spoke", "redis", "server")


# -- markdown -------------------------------------------------------------------------------


def _env_table(env: dict[str, Any]) -> list[str]:
    pk = env["packages"]
    rows = [
        ("date (UTC)", env["date"]),
        ("CPU", f"{env['cpu_model']}, {env['cores']} cores ({env['affinity_cores']} usable)"),
        ("memory", f"{env['memory_gb']} GB"),
        ("kernel", env["kernel"]),
        ("Python", env["python"]),
        ("redis-server", env["redis_server"]),
        ("grpcio / protobuf", f"{pk['grpcio']} / {pk['protobuf']}"),
        ("cryptography", pk["cryptography"]),
        ("redis-py / bullmq / celery", f"{pk['redis']} / {pk['bullmq']} / {pk['celery']}"),
        ("commit", env["git_commit"] + (" + uncommitted changes" if env.get("git_dirty") else "")),
    ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _targets_table(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"| ratio (per round, then median) | measured [min{DASH}max] | target | met |",
        "|---|---|---|---|",
    ]
    for r in doc["ratios"]:
        if r["target"] is None:
            continue
        sign = "≤" if r["better"] == "le" else "≥"
        met = {True: "yes", False: "**no**", None: DASH}[r["met"]]
        lines.append(f"| {r['name']} | {span(r)} | {sign} {r['target']} | {met} |")
    sr = doc.get("scale_ratios")
    if sr:
        worst = max(sr["enqueue"], sr["pickup"], sr["status"])
        met = "yes" if sr["met"] else "**no**"
        lines.append(
            f"| cost at {sr['to']:,} / cost at {sr['from']:,} queued (worst of enqueue, pickup, "
            f"status p50; one measurement each) | {fmt(worst)} | ≤ 1.1 | {met} |"
        )
    return lines


def _other_ratios(doc: dict[str, Any]) -> list[str]:
    lines = [f"| ratio | median [min{DASH}max] |", "|---|---|"]
    lines += [f"| {r['name']} | {span(r)} |" for r in doc["ratios"] if r["target"] is None]
    return lines


def _arms_table(doc: dict[str, Any]) -> list[str]:
    head = (
        "| arm | what | p50 ms | p90 ms | p99 ms | ops/s (16 in flight) | CPU µs/op: client · hub "
        "· spoke · redis · echo | Redis cmds/op (scripts) | acked · ok · lost · dup · errors |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, a in doc["arms"].items():
        cpu = a["cpu_us_per_op"]
        cpu_text = " · ".join(span(cpu.get(role), 0) for role in _ROLES)
        cmds = DASH
        if "redis_commands_per_op" in a:
            scripts = fmt(a["redis_scripts_per_op"]["median"], 1)
            cmds = f"{span(a['redis_commands_per_op'], 1)} ({scripts})"
        c = a["correctness"]
        corr = f"{c['acked']} · {c['ok']} · {c['lost']} · {c['duplicates']} · {c['errors']}"
        p90, p99 = fmt(a["p90"]["median"], 3), fmt(a["p99"]["median"], 3)
        lines.append(
            f"| `{name}` | {a['description']} | {span(a['p50'], 3)} | {p90} | {p99} "
            f"| {span(a['tput'], 0)} | {cpu_text} | {cmds} | {corr} |"
        )
    return lines


def _scale_table(doc: dict[str, Any]) -> list[str]:
    scale = doc.get("scale")
    if not scale or not scale["levels"]:
        return ["(scale phase not run)"]
    lines = [
        "| queued agents | enqueue p50 / p99 ms | pickup p50 / p99 ms | status p50 / p99 ms | "
        "bytes per queued agent | AOF | Redis restart s | spoked restart s | fill rate /s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in scale["levels"]:
        rs = lv["restart"]
        lines.append(
            f"| {lv['agents']:,} | {fmt(lv['enqueue']['p50_ms'])} / {fmt(lv['enqueue']['p99_ms'])} "
            f"| {fmt(lv['pickup']['p50_ms'])} / {fmt(lv['pickup']['p99_ms'])} "
            f"| {fmt(lv['status']['p50_ms'])} / {fmt(lv['status']['p99_ms'])} "
            f"| {fmt(lv['bytes_per_agent'], 0)} | {rs['aof_bytes'] / 2**20:.1f} MiB "
            f"| {fmt(rs['redis_aof_load_s'])} | {fmt(rs['spoke_start_s'])} "
            f"| {fmt(lv['fill_per_s'], 0)} |"
        )
    return lines


def _foreign(doc: dict[str, Any]) -> str:
    shares = [
        num(r.get("foreign_cpu_share"))
        for a in doc["arms"].values()
        for r in a["rounds"]
        if r.get("foreign_cpu_share") is not None
    ]
    if not shares:
        return ""
    shares.sort()
    return (
        f"Other processes on the machine (not this benchmark's) used a median "
        f"{shares[len(shares) // 2] * 100:.0f}% and at most {shares[-1] * 100:.0f}% of its CPU "
        "during an arm (from `/proc/stat`); rounds with more of it are noisier, which is why "
        "ratios are taken within a round."
    )


def markdown(doc: dict[str, Any], plot_dir: str) -> str:
    env = doc["environment"]
    opts = doc["options"]
    fit = doc.get("fanout_fit")
    fit_text = "(fewer than two fan-out arms ran)"
    if fit:
        fit_text = (
            f"Least-squares fit of p50 over N = {', '.join(map(str, fit['n']))}, per round: "
            f"**{span(fit['slope_ms_per_spoke'], 3)} ms per extra spoke**, intercept "
            f"{span(fit['intercept_ms'], 3)} ms."
        )
    parts = [
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench` ({doc['mode']} run, {opts['rounds']} rounds, "
        f"{opts['concurrency']} in flight for throughput, seed {opts['seed']}, "
        f"{doc['elapsed_s']:.0f} s). Raw per-round numbers: [`bench/results.json`]"
        f"({plot_dir}/results.json). Issue #5.",
        "",
        "Every arm runs once per round, in a new random order each round; each ratio is taken "
        "within a round against the floor measured in that same round, and the table shows the "
        f"median over rounds with the min{DASH}max range. Latency is client-side, one op at a "
        "time; throughput uses a bounded number of ops in flight. CPU per op is utime+stime from "
        "`/proc/<pid>/stat` of each process (hub, spoke, Redis, echo servers, and this client), "
        "sampled before and after the arm (10 ms tick resolution). Redis commands per op come "
        "from `INFO commandstats` and include commands run inside Lua scripts.",
        "",
        "## Environment",
        "",
        *_env_table(env),
        "",
        f"Every process (client, hubd, spoked, redis-server, echo servers) shares these cores. "
        f"A signed SpawnAgent request is {doc['request_bytes']} bytes; the echo floor sends and "
        "receives that many.",
        "",
        _foreign(doc),
        "",
        "## Targets",
        "",
        *_targets_table(doc),
        "",
        "### Issue 13",
        "",
        *issue13.render(issue13.from_doc(doc)),
        "",
        *notes.render(doc),
        "",
        "## All arms",
        "",
        *_arms_table(doc),
        "",
        "CPU per op covers everything the arm did, untimed set-up included: for "
        "`spawn_to_running` and `kill_to_gone` that is the agent's whole life in the spoke "
        "(spawn, start, supervise, finish), not only the timed part. "
        "Correctness columns are summed over rounds: `acked` spawns the client saw succeed, "
        "`ok` those found exactly as expected (QUEUED with their bullmq job; SUCCEEDED or "
        "KILLED on attempt 1 for arms that run agents; a correct answer for reads), `lost` "
        "acked but not found, `dup` extra records, second attempts or second runs.",
        "",
        "### Other ratios",
        "",
        *_other_ratios(doc),
        "",
        "## Status fan-out",
        "",
        fit_text,
        "",
        "## Backlog scale",
        "",
        *_scale_table(doc),
        "",
        "## Plots",
        "",
        *(f"![{p[:-4]}]({plot_dir}/{p})" for p in PLOTS),
        "",
        "## Method",
        "",
        *notes.method(doc),
        "",
    ]
    return "\n".join(parts)


def write_docs(doc: dict[str, Any], docs: Path) -> None:
    """``docs/benchmarks.md``, ``docs/bench/*.png`` and ``docs/bench/results.json``."""
    bench = docs / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    write_plots(doc, bench)
    (bench / "results.json").write_text(json.dumps(doc, indent=1))
    page = docs / "benchmarks.md"
    old = page.read_text() if page.exists() else ""
    # The federation arm's section (its own run) stays: federation_report.keep.
    page.write_text(federation_report.keep(old, markdown(doc, plot_dir="bench")))


# -- plots ----------------------------------------------------------------------------------


def write_plots(doc: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for name, draw in (
        ("latency.png", _plot_latency),
        ("ratios.png", _plot_ratios),
        ("cpu.png", _plot_cpu),
        ("fanout.png", _plot_fanout),
        ("scale.png", _plot_scale),
    ):
        fig = draw(plt, doc)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def _plot_latency(plt: Any, doc: dict[str, Any]) -> Any:
    arms = list(doc["arms"].items())
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(arms) + 1.2))
    ys = range(len(arms))
    med = [num(a["p50"]["median"]) for _, a in arms]
    lo = [m - num(a["p50"]["min"]) for m, (_, a) in zip(med, arms, strict=True)]
    hi = [num(a["p50"]["max"]) - m for m, (_, a) in zip(med, arms, strict=True)]
    colors = [_KIND_COLOR[a["kind"]] for _, a in arms]
    ax.barh(list(ys), med, xerr=[lo, hi], color=colors, capsize=2)
    ax.set_yticks(list(ys), [n for n, _ in arms])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency, ms (log; bars: min{DASH}max over rounds)")
    ax.set_title("Latency per op — grey: floors, blue: ours, orange: rivals")
    return fig


def _plot_ratios(plt: Any, doc: dict[str, Any]) -> Any:
    rs = [r for r in doc["ratios"] if r["median"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rs) + 1.2))
    ys = list(range(len(rs)))
    med = [num(r["median"]) for r in rs]
    err = [
        [m - num(r["min"]) for m, r in zip(med, rs, strict=True)],
        [num(r["max"]) - m for m, r in zip(med, rs, strict=True)],
    ]
    colors = [
        "#2ca02c" if r["met"] else ("#d62728" if r["met"] is False else "#8c8c8c") for r in rs
    ]
    ax.barh(ys, med, xerr=err, color=colors, capsize=2)
    for y, r in zip(ys, rs, strict=True):
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.set_yticks(ys, [r["name"] for r in rs], fontsize=8)
    ax.invert_yaxis()
    if rs:  # a run of floors alone has no ratio: a log axis of nothing cannot draw
        ax.set_xscale("log")
    ax.set_xlabel("ratio (median over rounds; black tick: target; green met, red missed)")
    return fig


def _plot_cpu(plt: Any, doc: dict[str, Any]) -> Any:
    # Fan-out beyond one spoke would dwarf everything else; its table row has the numbers.
    arms = [
        (n, a)
        for n, a in doc["arms"].items()
        if (a["kind"] != "floor" or "echo" in n or n == "floor_signed")
        and not (n.startswith("fanout_") and n != "fanout_1")
    ]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(arms) + 1.2))
    left = [0.0] * len(arms)
    ys = list(range(len(arms)))
    for role, color in zip(
        _ROLES, ("#9467bd", "#2ca02c", "#1f77b4", "#d62728", "#8c8c8c"), strict=True
    ):
        vals = []
        for _, a in arms:
            v = a["cpu_us_per_op"].get(role)
            vals.append(max(num(v["median"]), 0.0) if v else 0.0)
        vals = [0.0 if math.isnan(v) else v for v in vals]
        ax.barh(ys, vals, left=left, color=color, label=role)
        left = [lo + v for lo, v in zip(left, vals, strict=True)]
    ax.set_yticks(ys, [n for n, _ in arms])
    ax.invert_yaxis()
    ax.set_xlabel("CPU µs per op (median over rounds), by process")
    ax.legend(fontsize=8)
    return fig


def _plot_fanout(plt: Any, doc: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    fit = doc.get("fanout_fit")
    if fit:
        ns = fit["n"]
        for n in ns:
            rounds = doc["arms"][f"fanout_{n}"]["rounds"]
            ax.scatter(
                [n] * len(rounds), [r["latency"]["p50_ms"] for r in rounds], color="#1f77b4", s=12
            )
        slope = num(fit["slope_ms_per_spoke"]["median"])
        icpt = num(fit["intercept_ms"]["median"])
        ax.plot(ns, [icpt + slope * n for n in ns], color="black", label=f"{slope:.3f} ms/spoke")
        ax.legend()
    ax.set_xlabel("spokes listed by one ListAgents through the hub (N)")
    ax.set_ylabel("p50 ms (dots: rounds)")
    return fig


def _plot_scale(plt: Any, doc: dict[str, Any]) -> Any:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    scale = doc.get("scale")
    if scale and scale["levels"]:
        xs = [lv["agents"] for lv in scale["levels"]]
        for key, color in (("enqueue", "#1f77b4"), ("pickup", "#2ca02c"), ("status", "#ff7f0e")):
            a1.plot(
                xs,
                [lv[key]["p50_ms"] for lv in scale["levels"]],
                "o-",
                color=color,
                label=f"{key} p50",
            )
        a1.set_xscale("log")
        a1.set_xlabel("queued agents")
        a1.set_ylabel("ms")
        a1.legend()
        a2.plot(
            xs,
            [lv["restart"]["redis_aof_load_s"] for lv in scale["levels"]],
            "o-",
            label="Redis AOF load s",
        )
        a2.plot(
            xs,
            [lv["restart"]["spoke_start_s"] for lv in scale["levels"]],
            "o-",
            label="spoked start s",
        )
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("queued agents")
        a2.legend()
    return fig


def copy_results(src: Path, docs: Path) -> None:
    """Re-render the docs from a saved ``results.json``."""
    doc = json.loads(src.read_text())
    write_docs(doc, docs)
    if src.resolve() != (docs / "bench" / "results.json").resolve():
        shutil.copyfile(src, docs / "bench" / "results.json")
