"""Statistics and the shape of one figure in ``results.json``.

Every figure is a dict with the same keys, so the JSON and the Markdown table are built the same
way: ``median_ms`` (or ``rate_per_s`` for throughput figures), ``p99_ms``,
``baseline_median_ms`` (or ``baseline_rate_per_s``), ``ratio`` (figure / baseline), ``target``
(a readable sentence), ``met`` and ``n``. Sub-measurements that belong to a figure (e.g. P2's
Start → COMPLETE next to Start → RUNNING) go under ``parts`` with the same keys; the figure's
``met`` is true only when every part meets its target.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): with few samples p99 is simply the maximum,
    which is the honest reading of a tail over a small run."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def latency(
    samples: Sequence[float],
    *,
    baseline: Sequence[float] | None,
    target_ms: float | None,
    target: str,
    on: str = "median",
    **extra: Any,
) -> dict[str, Any]:
    """A latency figure from samples in seconds.

    :param baseline: samples (seconds) of the floor measured in the same run
    :param target_ms: the bound; ``on`` says whether it applies to the median or the p99
    :param target: the target as a sentence for the table
    """
    median = statistics.median(samples) if samples else math.nan
    p99 = percentile(samples, 0.99)
    figure: dict[str, Any] = {
        "median_ms": ms(median),
        "p99_ms": ms(p99),
        "min_ms": ms(min(samples)) if samples else math.nan,
        "max_ms": ms(max(samples)) if samples else math.nan,
        "n": len(samples),
    }
    if baseline:
        base = statistics.median(baseline)
        figure["baseline_median_ms"] = ms(base)
        figure["baseline_p99_ms"] = ms(percentile(baseline, 0.99))
        figure["baseline_n"] = len(baseline)
        figure["ratio"] = round(median / base, 3) if base > 0 else None
    else:
        figure["baseline_median_ms"] = None
        figure["ratio"] = None
    figure["target"] = target
    measured = p99 if on == "p99" else median
    figure["met"] = bool(samples) and (target_ms is None or measured * 1000.0 <= target_ms)
    figure.update(extra)
    return figure


def rate(
    rates: Sequence[float],
    *,
    baseline: Sequence[float] | None,
    target_rate: float,
    target: str,
    met: bool,
    **extra: Any,
) -> dict[str, Any]:
    """A throughput figure: the median of per-run rates (events/s or requests/s)."""
    median = statistics.median(rates) if rates else math.nan
    figure: dict[str, Any] = {
        "rate_per_s": round(median, 1),
        "min_rate_per_s": round(min(rates), 1) if rates else math.nan,
        "n": len(rates),
    }
    if baseline:
        base = statistics.median(baseline)
        figure["baseline_rate_per_s"] = round(base, 1)
        figure["baseline_n"] = len(baseline)
        figure["ratio"] = round(median / base, 3) if base > 0 else None
    else:
        figure["baseline_rate_per_s"] = None
        figure["ratio"] = None
    figure["target"] = target
    figure["met"] = bool(rates) and met and median >= target_rate
    figure.update(extra)
    return figure


def combine(main: dict[str, Any], parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``main`` with ``parts`` attached; met only if everything is met."""
    result = dict(main)
    result["parts"] = parts
    result["main_met"] = bool(main["met"])
    result["met"] = bool(main["met"]) and all(bool(p["met"]) for p in parts.values())
    return result
