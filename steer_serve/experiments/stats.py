"""The statistics of the results, on plain numbers (scipy does the distributions).

Each test returns None where it is undefined (too few observations, zero variance) instead of
a NaN that would look like a number in a report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Difference:
    """treatment minus control, its confidence interval and the two-sided p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float | None


@dataclass(frozen=True)
class SampleRatio:
    chi2: float
    p_value: float
    expected: tuple[float, ...]


def welch(treatment: Sequence[float], control: Sequence[float], confidence: float = 0.95) -> Difference | None:
    """Difference in means with the Welch-Satterthwaite t interval and Welch's t-test p-value."""
    t, c = np.asarray(treatment, dtype=float), np.asarray(control, dtype=float)
    if len(t) < 2 or len(c) < 2:
        return None
    var_t, var_c = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    se = math.sqrt(var_t + var_c)
    if se == 0:
        return None
    df = (var_t + var_c) ** 2 / (var_t**2 / (len(t) - 1) + var_c**2 / (len(c) - 1))
    half = stats.t.ppf((1 + confidence) / 2, df) * se
    diff = float(t.mean() - c.mean())
    p_value = float(stats.ttest_ind(t, c, equal_var=False).pvalue)
    return Difference(diff, diff - half, diff + half, p_value)


def two_proportions(hits_t: int, n_t: int, hits_c: int, n_c: int, confidence: float = 0.95) -> Difference | None:
    """Difference in rates: pooled two-proportion z-test p-value, unpooled (Wald) interval."""
    if n_t == 0 or n_c == 0:
        return None
    p_t, p_c = hits_t / n_t, hits_c / n_c
    pooled = (hits_t + hits_c) / (n_t + n_c)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    p_value = None if se_pooled == 0 else float(2 * stats.norm.sf(abs(p_t - p_c) / se_pooled))
    half = stats.norm.ppf((1 + confidence) / 2) * math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    return Difference(p_t - p_c, p_t - p_c - half, p_t - p_c + half, p_value)


def sample_ratio(observed: Sequence[int], weights: Sequence[float]) -> SampleRatio | None:
    """Chi-square goodness of fit of the observed arm counts to the configured weights (SRM check)."""
    pairs = [(o, w) for o, w in zip(observed, weights) if w > 0]
    total = sum(o for o, _ in pairs)
    if len(pairs) < 2 or total == 0:
        return None
    weight_sum = sum(w for _, w in pairs)
    expected = [total * w / weight_sum for _, w in pairs]
    result = stats.chisquare([o for o, _ in pairs], expected)
    return SampleRatio(float(result.statistic), float(result.pvalue), tuple(expected))


def quantiles(values: Sequence[float]) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    points = np.quantile(np.asarray(values, dtype=float), QUANTILES)
    return {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, points)}
