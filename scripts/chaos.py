"""Hubspoke chaos runs (issue #5): ``scripts/chaos [--scale reduced|full] [--scenario NAME]``.

Each scenario starts its own federation (redis-servers, hubd, spoked), streams spawns through
the hub with client-chosen command ids, injects its fault, waits for quiet and checks the
agents' ledger against what clients were told. Writes ``results.json`` and ``report.md``
under ``--out``; exits 1 if any scenario's expectations failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO)]

from chaoslib import report, scenarios  # noqa: E402 - after the path set-up above


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=("reduced", "full"), default="full")
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(scenarios.SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    p.add_argument("--out", type=Path, default=REPO / "chaos-out", help="results directory")
    return p


async def _run(names: list[str], scale: scenarios.Scale, out: Path) -> list[scenarios.Outcome]:
    outcomes = []
    for name in names:
        print(f"chaos: {name} ({scale.name}) ...", file=sys.stderr, flush=True)
        outcome = await scenarios.run_scenario(name, scale, out)
        status = "skipped" if outcome.skipped else ("pass" if outcome.passed else "FAIL")
        print(f"chaos: {name}: {status} in {outcome.duration_s:.0f} s", file=sys.stderr)
        outcomes.append(outcome)
        report.write(outcomes, out, scale.name)
    return outcomes


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scale = scenarios.FULL if args.scale == "full" else scenarios.REDUCED
    names = args.scenario or list(scenarios.SCENARIOS)
    out = args.out.resolve()
    outcomes = asyncio.run(_run(names, scale, out))
    print((out / "report.md").read_text())
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
