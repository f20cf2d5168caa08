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


@dataclass(frozen=True)
class WelchDiff:
    """The difference of two means with its Welch interval and test.

    ``delta`` = mean(a) − mean(b); ``ci_low``/``ci_high`` its t-interval with the
    Welch–Satterthwaite degrees of freedom ``df``; ``p`` the two-sided Welch p-value of
    H0: delta == ``null``. ``exact`` is True when both sides are constant (zero variance, e.g.
    a structural figure such as params_ratio): the difference is then known without sampling
    error, the interval is the point [delta, delta], df is inf and p is 0 (or 1 when delta
    equals the null). With fewer than two values on a side the interval, df and p are NaN.
    """

    delta: float
    ci_low: float
    ci_high: float
    df: float
    p: float
    n_a: int
    n_b: int
    exact: bool = False


def welch_diff(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
               null: float = 0.0) -> WelchDiff:
    """Welch CI of mean(a) − mean(b) and the two-sided p of H0: mean(a) − mean(b) == null."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = len(a), len(b)
    nan = float("nan")
    if na == 0 or nb == 0:
        return WelchDiff(nan, nan, nan, nan, nan, na, nb)
    delta = float(a.mean() - b.mean())
    if na < 2 or nb < 2:
        return WelchDiff(delta, nan, nan, nan, nan, na, nb)
    # a constant side has exactly zero variance (np.var may leave rounding noise)
    va = 0.0 if np.all(a == a[0]) else float(a.var(ddof=1))
    vb = 0.0 if np.all(b == b[0]) else float(b.var(ddof=1))
    if va == 0.0 and vb == 0.0:
        delta = float(a[0] - b[0])
        return WelchDiff(delta, delta, delta, math.inf, 1.0 if delta == null else 0.0,
                         na, nb, exact=True)
    sa, sb = va / na, vb / nb
    se = math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(delta - null) / se, df))
    return WelchDiff(delta, delta - half, delta + half, float(df), p, na, nb)


def welch_ci(a: Sequence[float], b: Sequence[float],
             confidence: float = 0.95) -> tuple[float, float]:
    """The Welch t-interval of mean(a) − mean(b) (Welch–Satterthwaite df)."""
    d = welch_diff(a, b, confidence)
    return d.ci_low, d.ci_high
