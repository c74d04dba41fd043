"""scripts/bench's command line: ``--report-only`` re-renders docs/ from a saved run, so with
``--docs no`` it is refused in one line and leaves docs/ alone (it used to rewrite them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_report_only_with_docs_no_is_refused_and_leaves_the_docs_alone(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text("{}")
    page = REPO / "docs" / "benchmarks.md"
    before = page.read_bytes()
    bench = str(REPO / "scripts" / "bench.py")
    done = subprocess.run(
        [sys.executable, bench, "--report-only", str(results), "--docs", "no"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: --report-only rewrites docs/; with --docs no it has nothing to do"
    ]
    assert page.read_bytes() == before
