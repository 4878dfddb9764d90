"""The results math agrees with scipy and with textbook numbers on known data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from steer_serve.experiments.stats import quantiles, sample_ratio, two_proportions, welch


def test_welch_matches_scipy_p_value_and_interval() -> None:
    rng = np.random.default_rng(0)
    treated, control = rng.normal(1.3, 2.0, 40), rng.normal(1.0, 0.7, 65)
    ours = welch(treated.tolist(), control.tolist())
    reference = sps.ttest_ind(treated, control, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert ours.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-10)
    assert ours.difference == pytest.approx(treated.mean() - control.mean())


def test_welch_on_hand_computed_data() -> None:
    # means 3 and 1, variances 5/2 and 2/3, n 5 and 4: se^2 = 1/2 + 1/6, Welch-Satterthwaite df
    ours = welch([1, 2, 3, 4, 5], [0, 1, 1, 2])
    se, df = math.sqrt(2 / 3), (2 / 3) ** 2 / ((1 / 2) ** 2 / 4 + (1 / 6) ** 2 / 3)
    assert df == pytest.approx(6.1935, abs=1e-4)
    assert ours.difference == 2.0
    assert ours.ci_high - 2.0 == pytest.approx(sps.t.ppf(0.975, df) * se, rel=1e-9)
    assert ours.p_value == pytest.approx(2 * sps.t.sf(2.0 / se, df), rel=1e-9)


def test_two_proportions_matches_chi_square_and_textbook_interval() -> None:
    # 120/1000 vs 90/1000: z^2 equals the uncorrected 2x2 chi-square, so the p-values agree
    ours = two_proportions(120, 1000, 90, 1000)
    chi2 = sps.chi2_contingency([[120, 880], [90, 910]], correction=False)
    assert ours.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
    half = 1.959963984540054 * math.sqrt(0.12 * 0.88 / 1000 + 0.09 * 0.91 / 1000)
    assert ours.difference == pytest.approx(0.03)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((0.03 - half, 0.03 + half), rel=1e-9)


def test_sample_ratio_mismatch_test() -> None:
    ok = sample_ratio([5030, 2480, 2490], [50, 25, 25])
    assert ok.expected == (5000, 2500, 2500)
    assert ok.chi2 == pytest.approx(30**2 / 5000 + 20**2 / 2500 + 10**2 / 2500)
    assert ok.p_value == pytest.approx(sps.chi2.sf(ok.chi2, 2)) and ok.p_value > 0.1
    assert sample_ratio([5300, 4700], [1, 1]).p_value < 1e-8
    assert sample_ratio([10, 0, 10], [1, 0, 1]).expected == (10, 10)  # zero-weight arms are left out


def test_undefined_cases_are_none_not_nan() -> None:
    assert welch([1.0], [1.0, 2.0]) is None and welch([1.0, 1.0], [1.0, 1.0]) is None
    assert two_proportions(0, 0, 1, 2) is None and two_proportions(0, 10, 0, 10).p_value is None
    assert sample_ratio([0, 0], [1, 1]) is None and quantiles([]) is None
    assert quantiles([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.5, "p90": pytest.approx(3.7), "p99": pytest.approx(3.97)}
