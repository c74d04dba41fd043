"""The argparse entries of ``hubctl synthetic-all`` and ``hubctl shadow-summary`` (run by
hub/cli_synthetic.py and hub/cli_shadow.py); hub/cli_parser.py adds them."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Final

__all__ = ["DEFAULT_WINDOW", "EXAMPLES", "add_parsers", "window"]

DEFAULT_WINDOW: Final = "24h"
EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "synthetic-all": (
        "hubctl synthetic-all",
        "hubctl --json synthetic-all --spoke spoke-1 --only succeeds --only blocked",
        "hubctl synthetic-all --fixtures my-fixtures.toml --parallel 4",
    ),
    "shadow-summary": (
        "hubctl shadow-summary",
        "hubctl shadow-summary --window 7d --spoke spoke-1",
        "hubctl --json shadow-summary --window 90m",
    ),
}
_SPAN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def window(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` or plain seconds → seconds (> 0)."""
    match = _SPAN.match(text.lower())
    value = float(match.group(1)) * _UNIT[match.group(2)] if match else -1.0
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"window must be like 90s, 30m, 24h or 7d, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from .cli_synthetic import DEFAULT_PARALLEL, DEFAULT_WAIT_TIMEOUT_S

    sa = sub.add_parser(
        "synthetic-all",
        help="run the shipped fixture tasks on every READY spoke; exit 1 naming each that "
        "diverged from its expected state",
        parents=[common],
    )
    sa.add_argument(
        "--spoke",
        dest="spokes",
        action="append",
        default=[],
        help="run on this spoke (repeatable; default: every READY spoke)",
    )
    sa.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="this fixture only (repeatable)"
    )
    sa.add_argument(
        "--fixtures", type=Path, metavar="FILE", help="a fixture file (default: the shipped set)"
    )
    sa.add_argument(
        "--parallel",
        type=_positive_int,
        default=DEFAULT_PARALLEL,
        help=f"fixtures run at once (default {DEFAULT_PARALLEL})",
    )
    sa.add_argument(
        "--wait-timeout",
        type=_positive_seconds,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long one agent may take to settle (default {DEFAULT_WAIT_TIMEOUT_S:g})",
    )
    sa.add_argument(
        "--keep", action="store_true", help="do not kill agents left waiting on a person"
    )

    ss = sub.add_parser(
        "shadow-summary",
        help="counts by state, mean duration and failures of a window; exit 1 on any failure",
        parents=[common],
    )
    ss.add_argument(
        "--window",
        type=window,
        default=window(DEFAULT_WINDOW),
        metavar="SPAN",
        help=f"how far back from now: 90s, 30m, 24h, 7d (default {DEFAULT_WINDOW})",
    )
    ss.add_argument("--spoke", help="one spoke (default: every spoke)")
