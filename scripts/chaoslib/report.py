"""Write a chaos run's results: ``results.json`` (everything) and ``report.md`` (the table)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from .scenarios import Outcome

__all__ = ["markdown", "write"]

_COLUMNS = (
    ("acked", "acked"),
    ("executed", "executed"),
    ("lost", "lost_count"),
    ("dup ok", "duplicated_allowed"),
    ("dup bad", "duplicated_unallowed"),
    ("overlap", "overlapping_count"),
    ("rerun after ok", "dup_after_success"),
    ("retried→ok", "recovered_retried"),
    ("→LOST", "recovered_lost"),
    ("LOST but done", "lost_but_completed"),
    ("misreported", "misreported_count"),
    ("max live", "max_concurrent"),
    ("limit", "limit"),
    ("outage ops", "outage_ops"),
    ("outage OK", "outage_ok"),
    ("outage held", "outage_held"),
)


def markdown(outcomes: Sequence[Outcome]) -> str:
    head = "| scenario | result | s | " + " | ".join(c for c, _ in _COLUMNS) + " | orphans |"
    rule = "|" + "---|" * (len(_COLUMNS) + 4)
    rows = [head, rule]
    for o in outcomes:
        if o.skipped or o.verdict is None:
            rows.append(f"| {o.scenario} | skipped | | " + " | " * len(_COLUMNS) + " |")
            continue
        d = o.verdict.as_dict()
        cells = " | ".join(str(d[k]) for _, k in _COLUMNS)
        result = "pass" if o.passed else "FAIL"
        rows.append(
            f"| {o.scenario} | {result} | {o.duration_s:.0f} | {cells} | {len(o.verdict.orphans)} |"
        )
    lines = ["\n".join(rows), ""]
    for o in outcomes:
        if o.skipped:
            lines.append(f"- **{o.scenario}** skipped: {o.skipped}")
            continue
        failed = [k for k, ok in o.expectations.items() if not ok]
        if failed:
            lines.append(f"- **{o.scenario}** failed: {', '.join(failed)}")
        for note in o.notes:
            lines.append(f"- {o.scenario}: {note}")
        rec = o.extra.get("recovery_after_window_s")
        if rec:
            lines.append(f"- {o.scenario}: first OK after each outage window (s): {rec}")
        if o.verdict is not None and o.verdict.outage_codes:
            lines.append(f"- {o.scenario}: answers inside outage windows: {o.verdict.outage_codes}")
    return "\n".join(lines) + "\n"


def write(outcomes: Sequence[Outcome], out: Path, scale: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "scale": scale,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    results = {"meta": meta, "scenarios": [o.as_dict() for o in outcomes]}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    path = out / "report.md"
    path.write_text(f"# Chaos run ({scale})\n\n" + markdown(outcomes))
    return path
