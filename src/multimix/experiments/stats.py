"""Paired statistics of the comparison: the mean difference over seeds, its 95% t-interval, the paired t-test."""

from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np

__all__ = ["paired_comparison"]


def _t_quantile(p: float, dof: int) -> float:
    try:
        from scipy import stats
        return float(stats.t.ppf(p, dof))
    except ImportError:  # normal approximation
        return 1.959963984540054 if p == 0.975 else float("nan")


def paired_comparison(ours: Sequence[float], baseline: Sequence[float]) -> Dict[str, float]:
    """Mean paired difference, its 95% t-interval and the two-sided paired t-test p-value."""
    diff = np.asarray(ours, dtype=float) - np.asarray(baseline, dtype=float)
    k = len(diff)
    mean = float(diff.mean())
    if k < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "p": float("nan")}
    se = float(diff.std(ddof=1)) / math.sqrt(k)
    half = _t_quantile(0.975, k - 1) * se
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
    else:
        try:
            from scipy import stats
            p = float(stats.ttest_rel(ours, baseline).pvalue)
        except ImportError:
            p = float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "p": p}
