"""Sequential statistics against their references: the mSPRT of Johari et al. in their own
notation, the confidence sequence as the set where Lambda < 1/alpha, Holm against statsmodels,
and a seeded A/A simulation where peeking at every look keeps false positives at or below alpha
(where a fixed-horizon test peeked at the same looks does not)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from steer_serve.experiments.sequential import Look, half_width, likelihood_ratio, optimal_ratio, trajectory
from steer_serve.experiments.stats import holm


def _johari_lambda(n: int, x_mean: float, y_mean: float, sigma2: float, tau2: float) -> float:
    """Johari et al. (2022), two-stream normal mSPRT with n pairs and known variance sigma^2."""
    return math.sqrt(2 * sigma2 / (2 * sigma2 + n * tau2)) * math.exp(
        n * n * tau2 * (y_mean - x_mean) ** 2 / (4 * sigma2 * (2 * sigma2 + n * tau2)))


@pytest.mark.parametrize(("n", "x_mean", "y_mean", "sigma2", "tau2"),
                         [(100, 0.0, 0.3, 1.0, 0.01), (2500, 3.1, 3.15, 2.0, 0.004), (10, 0.2, 0.2, 0.5, 1.0)])
def test_likelihood_ratio_is_the_published_formula(n, x_mean, y_mean, sigma2, tau2) -> None:
    ours = likelihood_ratio(y_mean - x_mean, 2 * sigma2 / n, tau2)
    assert ours == pytest.approx(_johari_lambda(n, x_mean, y_mean, sigma2, tau2), rel=1e-12)


def test_confidence_sequence_bounds_are_where_lambda_crosses_one_over_alpha() -> None:
    variance, tau2, alpha, theta_hat = 0.004, 0.01, 0.05, 0.12
    width = half_width(variance, tau2, alpha)
    for bound in (theta_hat - width, theta_hat + width):
        assert likelihood_ratio(theta_hat, variance, tau2, theta=bound) == pytest.approx(1 / alpha, rel=1e-9)
    assert likelihood_ratio(theta_hat, variance, tau2, theta=theta_hat) < 1 / alpha


def test_optimal_ratio_minimises_the_width_at_the_planned_variance() -> None:
    r = optimal_ratio(0.05)
    assert r == pytest.approx(2 * math.log(20) + math.log1p(r))
    widths = {ratio: half_width(1.0, ratio, 0.05) for ratio in (r * 0.8, r, r * 1.25)}
    assert widths[r] < widths[r * 0.8] and widths[r] < widths[r * 1.25]


def test_trajectory_on_known_data_matches_the_formulas_and_is_monotone() -> None:
    looks = [Look(100, 0.32, 1.1, 100, 0.30, 1.0), Look(400, 0.36, 1.05, 400, 0.30, 0.98),
             Look(900, 0.37, 1.0, 900, 0.30, 1.0)]
    points = trajectory(looks, alpha=0.05, planned_n=1000)
    for look, point in zip(looks, points):
        variance = look.variance / look.n + look.control_variance / look.control_n
        tau2 = optimal_ratio(0.05) * (look.variance + look.control_variance) / 1000
        assert point.difference == pytest.approx(look.mean - look.control_mean)
        assert point.p_value <= 1 / likelihood_ratio(point.difference, variance, tau2) + 1e-15
        assert point.ci_low >= point.difference - half_width(variance, tau2, 0.05) - 1e-12
    assert [p.p_value for p in points] == sorted((p.p_value for p in points), reverse=True)
    assert all(b.ci_low >= a.ci_low and b.ci_high <= a.ci_high for a, b in zip(points, points[1:]))
    assert trajectory([Look(1, 0.0, 0.0, 5, 0.0, 1.0)]) == [None]


def test_holm_matches_statsmodels() -> None:
    rng = np.random.default_rng(7)
    for size in (1, 2, 5, 12):
        p_values = rng.uniform(0, 0.2, size).tolist()
        expected = multipletests(p_values, alpha=0.05, method="holm")[1]
        assert holm(p_values) == pytest.approx(expected.tolist(), abs=1e-12)
    assert holm([0.01, None, 0.04]) == [0.02, None, 0.04]


def _aa_false_positive_rates(runs: int, looks: int, per_look: int, alpha: float, seed: int) -> tuple[float, float]:
    """Share of A/A runs ever declared significant: mSPRT vs. a z-test, both checked at every look."""
    rng = np.random.default_rng(seed)
    sequential_hits = naive_hits = 0
    z = sps.norm.ppf(1 - alpha / 2)
    for _ in range(runs):
        a = rng.binomial(1, 0.3, (looks, per_look)).astype(float)
        b = rng.binomial(1, 0.3, (looks, per_look)).astype(float)
        cumulative = []
        naive = False
        for k in range(1, looks + 1):
            xa, xb = a[:k].ravel(), b[:k].ravel()
            look = Look(xa.size, xa.mean(), xa.var(ddof=1), xb.size, xb.mean(), xb.var(ddof=1))
            cumulative.append(look)
            se = math.sqrt(look.variance / look.n + look.control_variance / look.control_n)
            naive |= se > 0 and abs(look.mean - look.control_mean) / se > z
        points = [p for p in trajectory(cumulative, alpha, planned_n=looks * per_look // 2) if p is not None]
        sequential_hits += bool(points) and points[-1].p_value < alpha
        naive_hits += naive
    return sequential_hits / runs, naive_hits / runs


def test_aa_simulation_with_peeking_keeps_false_positives_at_or_below_alpha() -> None:
    sequential_rate, naive_rate = _aa_false_positive_rates(runs=400, looks=40, per_look=50, alpha=0.05, seed=2024)
    assert sequential_rate <= 0.05
    assert naive_rate > 0.10  # the same peeking breaks a fixed-horizon test: the simulation has teeth
