"""The federation arm's part of docs/benchmarks.md: one section between two markers, kept
when the rest of the page is generated again, and its raw numbers in docs/bench/.

:func:`write` puts ``docs/bench/federation.json`` and the section in place (replacing the
old one, or before ``## Plots`` the first time); :func:`keep` carries the section over into a
page :mod:`benchlib.report` has just generated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BEGIN = "<!-- federation:begin (scripts/bench --arms federation) -->"
END = "<!-- federation:end -->"
ANCHOR = "\n## Plots"
NOTES = ""
"""The why of the last full run's misses, in prose (written from its profile)."""


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _met(item: dict[str, Any]) -> str:
    return "yes" if item["met"] else "**no**"


def _miss(item: dict[str, Any], unit: str) -> str:
    over = item["value"] - item["target"]
    return f"{over:+.1f} {unit} ({item['value'] / item['target'] - 1:+.0%})"


def _complete(fan: dict[str, Any], spokes: int) -> str:
    if not fan["incomplete_calls"]:
        return f"Every call carried all {spokes:,} pages."
    reasons = ", ".join(f"{why} {n:,}" for why, n in sorted(fan["unreached"].items()))
    return (
        f"**{fan['incomplete_calls']} of {fan['calls']} calls lacked some pages**: "
        f"{fan['unreached_per_call']:.1f} spokes per call on average were not reached in the "
        f"hub's fan-out deadline (reasons the hub signed, summed over calls: {reasons})."
    )


def section(result: dict[str, Any], notes: str = "") -> str:
    """The markdown section for one federation run (``notes``: the why, in prose)."""
    s = result["sizes"]
    t = result["targets"]
    fan = result["fanout"]["latency"]
    big = result["selector_spawn"]["big"]["latency"]
    solo = result["selector_spawn"]["solo"]["latency"]
    env = result["environment"]
    mem = result["memory"]
    rows = [
        (
            "hub memory per spoke: (RSS with N sessions - RSS with 0) / N",
            f"{mem['kb_per_spoke']:.1f} KB",
            f"≤ {t['kb_per_spoke']['target']:.0f} KB",
            f"{t['kb_per_spoke']['floor']:.0f} KB",
            _met(t["kb_per_spoke"]),
        ),
        (
            f"hub CPU at idle, heartbeats every {s['heartbeat_s']:g} s "
            f"({result['heartbeats_per_s']:.0f}/s)",
            f"{result['idle']['cpu_pct']:.1f} % of one core",
            f"≤ {t['cpu_pct']['target']:.0f} %",
            f"{t['cpu_pct']['floor']:.0f} %",
            _met(t["cpu_pct"]),
        ),
        (
            f"fan-out list over {s['spokes']:,} spokes, p99",
            f"{_ms(fan['p99_ms'])} ms",
            f"≤ {t['fanout_p99_ms']['target']:,.0f} ms",
            "none given",
            _met(t["fanout_p99_ms"]),
        ),
    ]
    misses = [
        f"{name}: {_miss(t[key], unit)} over the target"
        for key, name, unit in (
            ("kb_per_spoke", "memory", "KB"),
            ("cpu_pct", "CPU", "points"),
            ("fanout_p99_ms", "fan-out p99", "ms"),
        )
        if not t[key]["met"]
    ]
    parts = [
        BEGIN,
        f"## Federation: {s['spokes']:,} connect-mode spokes",
        "",
        f"`scripts/bench --arms federation` ({env['date']}, commit {env['git_commit']}, "
        f"{result['elapsed_s']:.0f} s). Raw numbers: [`bench/federation.json`]"
        "(bench/federation.json). Issue #10.",
        "",
        f"One real hubd over TLS whose config lists {s['spokes']:,} connect-mode spokes, each "
        "with its own Ed25519 key in the trust store and its own TLS client certificate (one "
        f"CA); {s['processes']} simulator processes (`scripts/benchlib/sim_spokes.py`) run "
        f"{s['spokes'] // s['processes']:,} real `HubLink` sessions each, heartbeating a "
        f"signed status every {s['heartbeat_s']:g} s and answering ListAgents and SpawnAgent "
        "with signed replies bound to the command. All "
        f"{result['connections']['at_start']:,} sessions were distinct ESTABLISHED TCP "
        "connections at the hub's port (matched by port in `/proc/<pid>/net/tcp` of the hubd "
        f"and the simulators; {result['connections']['at_end']:,} at the end) and every spoke "
        f"was READY in `hubctl --json spokes`; the sessions opened in {result['connect_s']:.1f} s.",
        "",
        "| measure | measured | target | floor | met |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows),
        "",
        f"- **Memory:** hubd RSS {result['memory']['rss_0_bytes'] / 2**20:.1f} MiB with 0 "
        f"sessions, {result['memory']['rss_n_bytes'] / 2**20:.1f} MiB with "
        f"{s['spokes']:,} (peak in the window "
        f"{result['idle']['rss_peak_bytes'] / 2**20:.1f} MiB).",
        f"- **CPU:** over a {result['idle']['wall_s']:.0f} s window of heartbeats only "
        f"(utime+stime of the hubd); with 0 sessions it used "
        f"{result['baseline']['cpu_pct']:.1f} %, so about "
        f"{result['cpu_us_per_heartbeat']:,.0f} µs of hub CPU per heartbeat.",
        f"- **Fan-out list** (`Client.list()` over every spoke, {result['fanout']['calls']} "
        f"calls one after another): p50 {_ms(fan['p50_ms'])} ms, p90 {_ms(fan['p90_ms'])} ms, "
        f"p99 {_ms(fan['p99_ms'])} ms. Client-side time, so it includes the client's check of "
        f"up to {s['spokes']:,} signed pages. {_complete(result['fanout'], s['spokes'])}",
        f"- **Selector spawn** (`Client.spawn(selector={{bench: fed}})`, "
        f"{result['selector_spawn']['big']['spawns']} each, alternating): p50 "
        f"{_ms(big['p50_ms'])} ms over {s['spokes']:,} spokes (placed on "
        f"{result['selector_spawn']['big']['spokes_used']} distinct spokes) against "
        f"{_ms(solo['p50_ms'])} ms in a 1-spoke federation in the same run "
        f"({result['selector_spawn_ratio_p50']:.2f}x); p99 {_ms(big['p99_ms'])} ms and "
        f"{_ms(solo['p99_ms'])} ms.",
    ]
    if misses:
        parts += ["", "Missed: " + "; ".join(misses) + "."]
    if notes:
        parts += ["", notes]
    parts += [
        "",
        "Everything (hubd, simulators, Redis, client) shares the machine's "
        f"{env.get('cores', '?')} cores with whatever else runs on it, so CPU spent by the "
        "simulators and other work shows up in the latencies; the hub's CPU and RSS are its "
        "own.",
        END,
    ]
    return "\n".join(parts) + "\n"


def keep(old: str, new: str) -> str:
    """``new`` (a regenerated page) with the federation section of ``old`` carried over."""
    if BEGIN not in old or END not in old or BEGIN in new:
        return new
    block = old[old.index(BEGIN) : old.index(END) + len(END)] + "\n"
    return put(new, block)


def put(page: str, block: str) -> str:
    """``page`` with ``block`` replacing its federation section, or before ``## Plots``."""
    if BEGIN in page and END in page:
        return page[: page.index(BEGIN)] + block + page[page.index(END) + len(END) + 1 :]
    if ANCHOR in page:
        at = page.index(ANCHOR) + 1
        return page[:at] + block + "\n" + page[at:]
    return page.rstrip("\n") + "\n\n" + block


def write(result: dict[str, Any], docs: Path, notes: str = "") -> None:
    """``docs/bench/federation.json`` and the section in ``docs/benchmarks.md``."""
    bench = docs / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "federation.json").write_text(json.dumps(result, indent=1) + "\n")
    page = docs / "benchmarks.md"
    old = page.read_text() if page.exists() else "# Benchmarks\n"
    page.write_text(put(old, section(result, notes)))
