"""The sample-ratio check agrees with scipy and with hand-computed numbers."""

from __future__ import annotations

import pytest
from scipy import stats as sps

from steer_serve.experiments.stats import sample_ratio


def test_sample_ratio_mismatch_test() -> None:
    ok = sample_ratio([5030, 2480, 2490], [50, 25, 25])
    assert ok.expected == (5000, 2500, 2500)
    assert ok.chi2 == pytest.approx(30**2 / 5000 + 20**2 / 2500 + 10**2 / 2500)
    assert ok.p_value == pytest.approx(sps.chi2.sf(ok.chi2, 2)) and ok.p_value > 0.1
    assert sample_ratio([5300, 4700], [1, 1]).p_value < 1e-8
    assert sample_ratio([10, 0, 10], [1, 0, 1]).expected == (10, 10)  # zero-weight arms are left out


def test_undefined_cases_are_none_not_nan() -> None:
    assert sample_ratio([0, 0], [1, 1]) is None and sample_ratio([4], [1]) is None
