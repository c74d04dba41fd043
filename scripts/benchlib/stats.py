"""Small statistics: percentiles, per-round aggregation, a least-squares line."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; values must be sorted."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds, and the sample count."""
    ordered = sorted(seconds)
    ms = 1000.0
    return {
        "n": float(len(ordered)),
        "p50_ms": percentile(ordered, 50) * ms,
        "p90_ms": percentile(ordered, 90) * ms,
        "p99_ms": percentile(ordered, 99) * ms,
        "mean_ms": (statistics.fmean(ordered) * ms) if ordered else math.nan,
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round values (NaNs dropped)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "rounds": 0.0}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "rounds": float(len(clean)),
    }


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points."""
    if len(xs) < 2:
        return math.nan, math.nan
    slope, intercept = statistics.linear_regression(xs, ys)
    return slope, intercept
