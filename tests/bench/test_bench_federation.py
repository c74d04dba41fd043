"""The federation bench arm (issue 10) at a reduced scale: ``scripts/bench.py --quick --arms
federation`` starts a real TLS hubd with 50 connect-mode spokes (real HubLink sessions in a
simulator process), checks 50 distinct TCP connections at the hub and every spoke READY,
and measures CPU, memory, fan-out list, selector spawn and the bare-stream floor. No
performance thresholds: only that it ran, counted what it must and produced finite
numbers. The full run (1,000 spokes, minutes) is ``scripts/bench --arms federation``.

Also: the federation section of docs/benchmarks.md survives the page being regenerated.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchlib import federation_report  # noqa: E402 - after the path set-up above


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_federation_arm_links_every_spoke_and_measures(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--arms",
            "federation",
            "--docs",
            "no",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the arm stops its hubds and simulators
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
    [run_dir] = tmp_path.glob("federation-*")
    result = json.loads((run_dir / "federation.json").read_text())
    n = result["sizes"]["spokes"]
    assert n == 50
    assert result["connections"] == {"at_start": n, "at_end": n}
    assert result["ready"] == n
    assert result["floor"]["connections"] == n  # the bare-stream floor, same run
    sessions = result["sessions"]  # the real HubLink sessions (and the 1-spoke one) held
    assert sessions["links"] == n + 1
    assert sessions["sessions"] == n + 1
    assert sessions["lost_reports"] == 0
    assert sessions["heartbeats"] >= n + 1
    for value in (
        result["idle"]["cpu_pct"],
        result["memory"]["kb_per_spoke"],
        result["fanout"]["latency"]["p50_ms"],
        result["fanout"]["latency"]["p99_ms"],
        result["selector_spawn"]["big"]["latency"]["p50_ms"],
        result["selector_spawn"]["solo"]["latency"]["p50_ms"],
        result["floor"]["cpu_pct"],
        result["floor"]["kb_per_spoke"],
    ):
        assert _finite(value), result
    assert result["idle"]["rss_bytes"] > result["baseline"]["rss_bytes"]
    # Selector spawns spread over the big federation and all land on the only spoke of
    # the small one.
    assert result["selector_spawn"]["big"]["spokes_used"] > 1
    assert result["selector_spawn"]["solo"]["spokes_used"] == 1
    assert set(result["targets"]) == {"kb_per_spoke", "cpu_pct", "fanout_p99_ms"}
    section = (run_dir / "federation.md").read_text()
    assert section.startswith(federation_report.BEGIN)
    assert "50 connect-mode spokes" in section


def test_the_federation_section_survives_a_regenerated_page() -> None:
    block = f"{federation_report.BEGIN}\n## Federation\n\nfigures\n{federation_report.END}\n"
    page = "# Benchmarks\n\n## All arms\n\nold\n\n## Plots\n\nplots\n"
    placed = federation_report.put(page, block)
    assert placed.index("## All arms") < placed.index("## Federation") < placed.index("## Plots")
    regenerated = "# Benchmarks\n\n## All arms\n\nnew\n\n## Plots\n\nplots\n"
    kept = federation_report.keep(placed, regenerated)
    assert "new" in kept
    assert "old" not in kept
    assert kept.count(federation_report.BEGIN) == 1
    assert "figures" in kept
    other = "<!-- perf:begin (by hand) -->\n## Perf\n\nkept too\n<!-- perf:end -->\n"
    kept_both = federation_report.keep(placed + "\n" + other, regenerated)
    assert kept_both.index("## Federation") < kept_both.index("## Plots")
    assert kept_both.index("## Plots") < kept_both.index("kept too")
    newer = block.replace("figures", "newer figures")
    assert federation_report.put(kept, newer).count("figures") == 1
    assert "newer figures" in federation_report.put(kept, newer)
