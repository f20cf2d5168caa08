"""Seed statistics for the leaderboard: mean ± sample std, t-based 95 % CI, Welch test.

With 3 seeds the t-interval is wide (t(0.975, 2) = 4.30); that is the honest answer.
Entries whose difference is not significant (Welch p >= alpha) are shown as tied rather
than ranked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample std (ddof=1); NaN for a single seed
    n: int
    ci_low: float
    ci_high: float


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    a = np.asarray(values, dtype=float)
    n = len(a)
    if n == 0:
        nan = float("nan")
        return Summary(nan, nan, 0, nan, nan)
    mean = float(a.mean())
    if n == 1:
        return Summary(mean, float("nan"), 1, float("nan"), float("nan"))
    std = float(a.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value; NaN when either side has fewer than two seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if np.all(a == a[0]) and np.all(b == b[0]):  # zero variance on both sides
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # near-identical seeds: scipy warns, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def tied(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> bool | None:
    """True when a and b are statistically indistinguishable; None when untestable."""
    p = welch_p(a, b)
    return None if math.isnan(p) else p >= alpha
