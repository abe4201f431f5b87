"""Welch's two-sample comparison: a mean difference, its 95 % confidence interval and p-value.

Examples:
    >>> test = welch([1.0, 1.2, 1.1], [0.5, 0.6, 0.55])
    >>> round(test["diff"], 3), test["low"] > 0
    (0.55, True)
"""

from __future__ import annotations

import math
import statistics
import warnings

__all__ = ["welch"]


def welch(a: list[float], b: list[float]) -> dict[str, float | None]:
    """Mean of ``a`` minus mean of ``b``, its 95 % confidence interval and Welch's two-sided p-value."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return {"diff": None, "low": None, "high": None, "p": None}
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return {"diff": diff, "low": diff, "high": diff, "p": 1.0 if diff == 0 else 0.0}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    with warnings.catch_warnings():  # nearly identical samples: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return {"diff": diff, "low": diff - half, "high": diff + half, "p": p}
