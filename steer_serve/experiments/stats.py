"""Fixed-sample statistics of the results: the sample-ratio check and Holm's correction.
(The comparisons themselves are sequential: `sequential.py`.) None where a test is undefined,
instead of a NaN that would look like a number in a report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class SampleRatio:
    chi2: float
    p_value: float
    expected: tuple[float, ...]


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


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); None stays None.
    Rejecting where adjusted < alpha controls the family-wise error rate at alpha."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[index] = running
    return adjusted
