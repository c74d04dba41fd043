"""Issue 13's table: one row per line of the issue, with its "aim" and "no worse than" columns.

Each row is measured from the run's per-round results (a ratio is taken within a round, then
the median over rounds, like ``run.ratios``) or from the scale phase, and is ``met`` when its
median is no worse than the "no worse than" column. A row whose arm (or scale level) did not
run says so and carries no number.

The rows, as the issue defines them:

* latency and throughput ratios against the gRPC echo floor (``echo_direct``);
* CPU ratios: the spoke's CPU per spawn (``spawn_direct``, role ``spoke``) over the echo
  server's per echo (``echo_direct``, role ``server``); the hub's CPU per relayed spawn
  (``spawn_hub``, role ``hub``) over the relay echo's CPU per echo (``echo_relay``, role
  ``server``: the relay and the echo server it forwards to, as the issue's 808 µs was);
* spawn-to-running over a bare asyncio spawn of the same Python agent (``spawn_python``);
* Redis memory per queued agent at the scale phase's largest level (KB of 1,000 bytes);
* the worst of enqueue, pickup and status p50 at 1M queued over 1k (judged only when the
  scale phase reached 1,000,000; a smaller top level is shown, not judged);
* the spoke's CPU per agent listed in a page of ``LIST_PAGE_SIZE`` (``list_page``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .fmt import DASH, fmt

LIST_PAGE_SIZE = 10
"""Agents in the ``list_page`` arm's page: the spoke's CPU per op is divided by it."""

SCALE_FROM = 1_000
SCALE_TO = 1_000_000
"""The backlog levels the issue's cost ratio compares."""

KB = 1000
"""The issue's KB (its 7.8 KB was 7,830 bytes)."""

Rounds = dict[str, list[dict[str, Any]]]
Metric = Callable[[dict[str, Any]], float]


@dataclass(frozen=True, slots=True)
class Measured:
    """A row's figure: per-round values (or one), a short note, or why it was not run."""

    values: tuple[float, ...] = ()
    detail: str = ""
    not_run: str = ""
    judged: bool = True
    """False: shown but not judged (the scale phase stopped short of 1M)."""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    aim: float
    bound: float
    """The "no worse than" column."""
    better: str
    """``le``: at most ``bound``; ``ge``: at least."""
    unit: str
    measure: Callable[[Rounds, dict[str, Any] | None], Measured]


def _p50(r: dict[str, Any]) -> float:
    return float(r["latency"]["p50_ms"])


def _tput(r: dict[str, Any]) -> float:
    value = r.get("throughput", {}).get("ops_s")
    return math.nan if value is None else float(value)


def _cpu(role: str) -> Metric:
    def get(r: dict[str, Any]) -> float:
        value = r.get("cpu_us_per_op", {}).get(role)
        return math.nan if value is None else float(value)

    return get


def _median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def _ratio(
    num: tuple[str, Metric], den: tuple[str, Metric], unit: str = ""
) -> Callable[[Rounds, dict[str, Any] | None], Measured]:
    """Per round: num arm's metric over den arm's, from the rounds both ran."""

    def measure(results: Rounds, scale: dict[str, Any] | None) -> Measured:
        missing = [a for a in (num[0], den[0]) if not results.get(a)]
        if missing:
            return Measured(not_run=f"not run ({', '.join(missing)})")
        rows = list(zip(results[num[0]], results[den[0]], strict=False))
        tops = [num[1](n) for n, _ in rows]
        bottoms = [den[1](d) for _, d in rows]
        values = tuple(t / b if b else math.nan for t, b in zip(tops, bottoms, strict=True))
        detail = ""
        if unit:
            detail = f"{fmt(_median(tops), 0)} / {fmt(_median(bottoms), 0)} {unit}"
        return Measured(values=values, detail=detail)

    return measure


def _hub_cpu(results: Rounds, scale: dict[str, Any] | None) -> Measured:
    """The hub's CPU per relayed spawn over the relay echo's (relay and echo server, as the
    issue measured it); the relay process alone is named in the detail when recorded."""
    m = _ratio(("spawn_hub", _cpu("hub")), ("echo_relay", _cpu("server")), "µs")(results, scale)
    relay = [_cpu("relay")(r) for r in results.get("echo_relay", [])]
    if m.not_run or math.isnan(_median(relay)):
        return m
    return Measured(
        values=m.values, detail=f"{m.detail}; the relay alone {fmt(_median(relay), 0)} µs"
    )


def _list_cpu(results: Rounds, scale: dict[str, Any] | None) -> Measured:
    rounds = results.get("list_page")
    if not rounds:
        return Measured(not_run="not run (list_page)")
    pages = [_cpu("spoke")(r) for r in rounds]
    return Measured(
        values=tuple(p / LIST_PAGE_SIZE for p in pages),
        detail=f"{fmt(_median(pages), 0)} µs spoke CPU per page of {LIST_PAGE_SIZE}",
    )


def _levels(scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(scale.get("levels", [])) if scale else []


def _memory(results: Rounds, scale: dict[str, Any] | None) -> Measured:
    levels = _levels(scale)
    if not levels:
        return Measured(not_run="not run (scale phase)")
    top = levels[-1]
    return Measured(
        values=(float(top["bytes_per_agent"]) / KB,),
        detail=f"{float(top['bytes_per_agent']):,.0f} B at {int(top['agents']):,} queued",
    )


def _backlog(results: Rounds, scale: dict[str, Any] | None) -> Measured:
    levels = _levels(scale)
    first = next((lv for lv in levels if lv["backlog"] == SCALE_FROM), None)
    if first is None or len(levels) < 2:
        return Measured(not_run="not run (scale phase from 1,000 to 1,000,000)")
    top = levels[-1]
    parts = {k: top[k]["p50_ms"] / first[k]["p50_ms"] for k in ("enqueue", "pickup", "status")}
    worst = max(parts, key=lambda k: parts[k])
    detail = f"{top['backlog']:,} / {SCALE_FROM:,}, worst {worst}; " + ", ".join(
        f"{k} {fmt(v)}" for k, v in parts.items()
    )
    if top["backlog"] < SCALE_TO:
        return Measured(
            values=(parts[worst],),
            detail=f"{detail}; 1,000,000 level not run (--scale-max)",
            judged=False,
        )
    return Measured(values=(parts[worst],), detail=detail)


ROWS = (
    Row(
        "signed spawn direct, p50 / echo p50",
        1.6,
        2.0,
        "le",
        "",
        _ratio(("spawn_direct", _p50), ("echo_direct", _p50)),
    ),
    Row(
        "spawn direct throughput (16 in flight) / echo throughput",
        0.55,
        0.40,
        "ge",
        "",
        _ratio(("spawn_direct", _tput), ("echo_direct", _tput)),
    ),
    Row(
        "spawn through the hub, p50 / echo p50",
        2.5,
        4.0,
        "le",
        "",
        _ratio(("spawn_hub", _p50), ("echo_direct", _p50)),
    ),
    Row(
        "signed status direct, p50 / echo p50",
        1.4,
        1.8,
        "le",
        "",
        _ratio(("status_direct", _p50), ("echo_direct", _p50)),
    ),
    Row(
        "spoke CPU per spawn / echo server CPU per echo",
        2.0,
        2.5,
        "le",
        "",
        _ratio(("spawn_direct", _cpu("spoke")), ("echo_direct", _cpu("server")), "µs"),
    ),
    Row(
        "hub CPU per relayed spawn / relay-echo CPU per echo",
        1.2,
        1.5,
        "le",
        "",
        _hub_cpu,
    ),
    Row(
        "spawn-to-running / bare asyncio spawn, Python agent",
        1.1,
        1.2,
        "le",
        "",
        _ratio(("spawn_to_running", _p50), ("spawn_python", _p50)),
    ),
    Row("Redis memory per queued agent", 2.0, 3.0, "le", "KB", _memory),
    Row(
        "cost at 1 M queued / at 1 k (worst of enqueue, pickup, status)",
        1.05,
        1.10,
        "le",
        "",
        _backlog,
    ),
    Row("spoke CPU per agent in a 10-agent list page", 50.0, 100.0, "le", "µs", _list_cpu),
)


def table(results: Rounds, scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Issue 13's rows, JSON-ready (NaN where a round had no figure)."""
    out = []
    for row in ROWS:
        m = row.measure(results, scale)
        clean = [v for v in m.values if not math.isnan(v)]
        median = statistics.median(clean) if clean else None
        met: bool | None = None
        if median is not None and m.judged:
            met = median <= row.bound if row.better == "le" else median >= row.bound
        out.append(
            {
                "name": row.name,
                "aim": row.aim,
                "no_worse_than": row.bound,
                "better": row.better,
                "unit": row.unit,
                "per_round": list(m.values),
                "median": median,
                "min": min(clean) if clean else None,
                "max": max(clean) if clean else None,
                "rounds": len(clean),
                "detail": m.detail,
                "not_run": m.not_run or ("" if clean else "not run (no finite figure)"),
                "met": met,
            }
        )
    return out


def _measured(r: dict[str, Any]) -> str:
    if r["not_run"]:
        return r["not_run"]
    unit = f" {r['unit']}" if r["unit"] else ""
    digits = 0 if r["unit"] == "µs" else 2
    text = f"{fmt(r['median'], digits)}"
    if r["rounds"] > 1 and r["min"] != r["max"]:
        text += f" [{fmt(r['min'], digits)}{DASH}{fmt(r['max'], digits)}]"
    text += unit
    return f"{text} ({r['detail']})" if r["detail"] else text


def from_doc(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a results.json carries, or computed from its rounds (an older run's)."""
    rows = doc.get("issue13")
    if rows is not None:
        return list(rows)
    results = {name: arm["rounds"] for name, arm in doc.get("arms", {}).items()}
    return table(results, doc.get("scale"))


def render(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The table as markdown lines: met is judged against "no worse than"."""
    lines = [
        f"| issue 13 row | measured: median [min{DASH}max] over rounds | aim | no worse than "
        "| met |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        sign = "≤" if r["better"] == "le" else "≥"
        unit = f" {r['unit']}" if r["unit"] else ""
        met = {True: "yes", False: "**no**", None: DASH}[r["met"]]
        lines.append(
            f"| {r['name']} | {_measured(r)} | {sign} {r['aim']:g}{unit} "
            f"| {sign} {r['no_worse_than']:g}{unit} | {met} |"
        )
    judged = [r for r in rows if r["met"] is not None]
    met_n = sum(1 for r in judged if r["met"])
    lines += [
        "",
        f'{met_n} of {len(rows)} rows met their "no worse than" column'
        f" ({len(rows) - len(judged)} not judged: not run, or the scale phase stopped short "
        "of 1,000,000).",
    ]
    return lines
