"""``scripts/bench --arms federation``: run the federation arm and write what it measured.

Its own processes (not the cluster of the other arms): ``results/federation-<stamp>/``
under ``--out`` gets ``federation.json``, ``federation.md`` and the simulators' logs; with
``docs`` the section of docs/benchmarks.md and docs/bench/federation.json are rewritten
(a full run: not ``--quick``, unless ``--docs yes``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import federation, federation_report


def run(*, quick: bool, out: Path, docs: Path | None) -> dict[str, Any]:
    sizes = federation.QUICK_FED if quick else federation.FULL_FED
    out_dir = out / f"federation-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench: federation arm, {sizes.spokes} spokes, under {out_dir}", file=sys.stderr)
    result = asyncio.run(federation.run_federation(sizes, out_dir))
    (out_dir / "federation.json").write_text(json.dumps(result, indent=1) + "\n")
    text = federation_report.section(result, federation_report.notes(result))
    (out_dir / "federation.md").write_text(text)
    if docs is not None:
        federation_report.write(result, docs, federation_report.notes(result))
    targets = ", ".join(
        f"{k} {v['value']:.1f} (target {v['target']:g}: {'met' if v['met'] else 'missed'})"
        for k, v in result["targets"].items()
    )
    print(f"bench: federation: {targets}", file=sys.stderr, flush=True)
    return result
