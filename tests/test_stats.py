"""Seed statistics: hand-computed values, not the implementation's own output."""

import math

import pytest

from kdbench.benchmarks.stats import summarize, tied, welch_p


def test_summary_of_three_seeds_uses_sample_std_and_t_interval():
    s = summarize([70.0, 71.0, 72.0])
    assert s.mean == pytest.approx(71.0)
    assert s.std == pytest.approx(1.0)  # ddof=1
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2)
    assert (s.ci_low, s.ci_high) == pytest.approx((71.0 - half, 71.0 + half))
    assert s.n == 3


def test_single_seed_has_no_spread_or_interval():
    s = summarize([70.0])
    assert s.mean == 70.0 and s.n == 1
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_welch_p_matches_hand_computation():
    # means 2 and 5, variances 1 and 1, n=3: t = 3 / sqrt(2/3) = 3.674, df = 4
    # two-sided p for t=3.674 with 4 degrees of freedom is 0.02131
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.02131, abs=2e-4)


def test_tied_flag_and_untestable_cases():
    assert tied([70.1, 70.5, 69.9], [70.3, 70.0, 70.6]) is True
    assert tied([1, 2, 3], [4, 5, 6]) is False
    assert tied([70.0], [71.0, 72.0]) is None  # one seed: no test possible
    assert welch_p([5, 5], [5, 5]) == 1.0
    assert welch_p([5, 5], [6, 6]) == 0.0
