"""Hubspoke benchmarks (issue #5): ``scripts/bench [--quick] [--rounds N] [--arms a,b] ...``.

Starts a private federation (redis-server per spoke site, spoked, hubd, echo servers),
runs every arm interleaved over rounds, then the backlog scale phase, and writes
``results.json``, ``benchmarks.md`` and PNG plots under ``--out``. A full run (not
``--quick``, all arms) also rewrites ``docs/benchmarks.md`` and ``docs/bench/``.
``--quick`` is CI's smoke test: small counts, no thresholds, docs left alone. Exit status 1
when an arm lost, duplicated or failed operations (correctness, never speed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO)]

from benchlib import federation_run, hub_cluster, report, run  # noqa: E402 - after the path set-up


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 rounds, small counts (CI smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: quick 2, full 5)")
    p.add_argument(
        "--arms",
        default="",
        help="comma-separated arm names or groups (floor, ours, rival, scale, federation: "
        "1,000 connect-mode spokes, only when named; hub-cluster: hub spawns on one Redis "
        "and on a Redis Cluster, only when named); default all but federation and hub-cluster",
    )
    p.add_argument("--out", type=Path, default=REPO / "bench-out", help="results directory")
    p.add_argument(
        "--scale-max",
        type=int,
        default=100_000,
        help="largest backlog of the scale phase (1000000 for the 1M level)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="ops in flight for throughput")
    p.add_argument("--seed", type=int, default=5, help="seed of the arm order")
    p.add_argument(
        "--docs",
        choices=("auto", "yes", "no"),
        default="auto",
        help="rewrite docs/benchmarks.md (auto: only for a full run of every arm)",
    )
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="only re-render docs/ from a saved results.json (refused with --docs no)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    docs_dir = REPO / "docs"
    if args.report_only is not None:
        if args.docs == "no":
            print(
                "Error: --report-only rewrites docs/; with --docs no it has nothing to do",
                file=sys.stderr,
            )
            return 2
        report.copy_results(args.report_only, docs_dir)
        return 0
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1 or args.concurrency < 1:
        print("Error: --rounds and --concurrency must be at least 1", file=sys.stderr)
        return 2
    if "hub-cluster" in arms:  # its own hubds, spoke and cluster (benchlib/hub_cluster.py)
        hub_cluster.run(quick=args.quick, out=args.out.resolve(), concurrency=args.concurrency)
        arms = tuple(a for a in arms if a != "hub-cluster")
        if not arms:
            return 0
    if "federation" in arms:  # its own hubd and simulated spokes (benchlib/federation.py)
        docs = args.docs == "yes" or (args.docs == "auto" and not args.quick)
        federation_run.run(
            quick=args.quick, out=args.out.resolve(), docs=docs_dir if docs else None
        )
        arms = tuple(a for a in arms if a != "federation")
        if not arms:
            return 0
    write_docs = args.docs == "yes" or (args.docs == "auto" and not args.quick and not arms)
    opts = run.Options(
        quick=args.quick,
        rounds=rounds,
        arms=arms,
        out=args.out.resolve(),
        scale_max=args.scale_max,
        concurrency=args.concurrency,
        seed=args.seed,
        docs=docs_dir if write_docs else None,
    )
    doc = asyncio.run(run.run(opts))
    bad = run.failures(doc)
    if bad:
        # Correctness, not speed: an acked spawn lost or doubled, or ops that failed.
        print("bench: correctness failures: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
