"""Number formatting shared by the report and its notes."""

from __future__ import annotations

import math
from typing import Any

DASH = "\u2013"
"""An en dash, for ranges and missing values (written as an escape for the linter)."""


def num(x: Any) -> float:
    return math.nan if x is None else float(x)


def val(spread: dict[str, Any] | None) -> float:
    """The median of a per-round spread, NaN when absent."""
    return num(spread.get("median")) if spread else math.nan


def ratio(doc: dict[str, Any], name: str) -> float:
    """The median of a named per-round ratio, NaN when it was not measured."""
    for r in doc.get("ratios", []):
        if r["name"] == name:
            return num(r["median"])
    return math.nan


def fmt(x: Any, digits: int = 2) -> str:
    v = num(x)
    if math.isnan(v):
        return DASH
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def span(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``median [min-max]`` of a per-round spread."""
    if not s or math.isnan(num(s.get("median"))):
        return DASH
    if s.get("rounds", 0) <= 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} [{fmt(s['min'], digits)}{DASH}{fmt(s['max'], digits)}]"
