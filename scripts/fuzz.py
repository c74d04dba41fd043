"""Hubspoke adversarial volume run (issue #4): ``scripts/fuzz [--scale reduced|full]``.

Starts a real hub and spoke in this process (private redis-server, loopback only) and sends
every input class to every RPC of HubService and SpokeService: fuzzed bodies, forged,
replayed (also after a restart), expired, future-dated, wrong audience, unsigned,
oversized, unknown methods, and the one positive class (clock skew inside the window).
Then, on a second federation with limited principals (issue 9): every verb on another
principal's agents, watch floods, argv injection per profile kind, Redis tampering and quota
exhaustion (``fuzzlib.isolation``).
Writes ``summary.json`` and ``report.md`` under ``--out``; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO)]

from fuzzlib import run  # noqa: E402 - after the path set-up above


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scale",
        choices=("reduced", "full"),
        default="full",
        help="full: 100,000 fuzzed, 10,000 forged, 10,000 replayed ...; reduced: about 1/50",
    )
    p.add_argument("--out", type=Path, default=REPO / "fuzz-out", help="results directory")
    p.add_argument("--seed", type=int, help="random seed (default: a fresh one, recorded)")
    p.add_argument("--concurrency", type=int, help="requests in flight (default 32)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run.main_sync(args.scale, args.out.resolve(), args.seed, args.concurrency)


if __name__ == "__main__":
    raise SystemExit(main())
