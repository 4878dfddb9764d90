"""Always-valid inference for a difference in means: the normal-mixture SPRT (mSPRT).

Method: Johari, Koomen, Pekelis, Walsh, "Always Valid Inference: Continuous Monitoring of A/B
Tests" (Operations Research 2022; arXiv:1512.04922), the statistic behind Optimizely's stats
engine. With theta_hat the observed difference (arm minus control), V its variance
(s_t^2/n_t + s_c^2/n_c) and a normal mixing distribution N(0, tau^2) over the true difference:

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * theta_hat^2 / (2 V (V + tau^2)))

(for n pairs with known variance sigma^2, V = 2 sigma^2 / n gives their equation exactly). The
always-valid p-value after each look is min(previous p, 1 / Lambda); the confidence sequence
is the set of theta with Lambda(theta) < 1/alpha, i.e. theta_hat +- half_width with

    half_width^2 = V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)),

intersected with the previous looks' intervals. Both stay valid however often one looks: the
chance that a true null is ever rejected is at most alpha. As in their deployed version, the
variances are plugged in from the data (asymptotically valid).

tau^2 decides for which sample size the sequence is tightest. We set tau^2 = r * V*, where V*
is the variance expected at `planned_n` units per arm and r solves r = 2 log(1/alpha) + log(1 + r)
(the minimiser of half_width at V = V*; it is GrowthBook's "tuning parameter" idea in this
parametrisation). Far from planned_n the sequence is still valid, only wider.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.optimize import brentq

PLANNED_N = 1000  # units per arm at which the confidence sequence is tightest


@dataclass(frozen=True)
class Look:
    """Cumulative statistics of both arms at one look."""

    n: int
    mean: float
    variance: float  # sample variance (ddof=1) of the arm's values
    control_n: int
    control_mean: float
    control_variance: float


@dataclass(frozen=True)
class SequentialPoint:
    difference: float
    ci_low: float
    ci_high: float
    p_value: float


def optimal_ratio(alpha: float) -> float:
    """r with r = 2 log(1/alpha) + log(1 + r): tau^2 / V that makes the sequence tightest at V."""
    bound = 2 * math.log(1 / alpha)
    return brentq(lambda r: r - bound - math.log1p(r), bound, 10 * bound + 10)


def mixture_variance(look: Look, alpha: float, planned_n: int = PLANNED_N) -> float:
    """tau^2 = r * V*, V* the variance of the difference at planned_n units per arm."""
    return optimal_ratio(alpha) * (look.variance + look.control_variance) / planned_n


def likelihood_ratio(theta_hat: float, variance: float, tau2: float, theta: float = 0.0) -> float:
    """The mixture likelihood ratio Lambda against H0: difference = theta (inf when it overflows)."""
    exponent = tau2 * (theta_hat - theta) ** 2 / (2 * variance * (variance + tau2))
    if exponent > 700:
        return math.inf
    return math.sqrt(variance / (variance + tau2)) * math.exp(exponent)


def half_width(variance: float, tau2: float, alpha: float) -> float:
    return math.sqrt(variance * (variance + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((variance + tau2) / variance)))


def trajectory(looks: Iterable[Look], alpha: float = 0.05, planned_n: int = PLANNED_N) -> list[SequentialPoint | None]:
    """One point per look (None while undefined: < 2 values in an arm, or no variance yet).
    p-values are running minima and intervals running intersections, as the method requires."""
    points: list[SequentialPoint | None] = []
    p_value, low, high = 1.0, -math.inf, math.inf
    for look in looks:
        variance = _difference_variance(look)
        if variance is None:
            points.append(None)
            continue
        theta_hat = look.mean - look.control_mean
        tau2 = mixture_variance(look, alpha, planned_n)
        p_value = min(p_value, 1.0 / likelihood_ratio(theta_hat, variance, tau2))
        width = half_width(variance, tau2, alpha)
        low, high = max(low, theta_hat - width), min(high, theta_hat + width)
        points.append(SequentialPoint(theta_hat, low, high, p_value))
    return points


def _difference_variance(look: Look) -> float | None:
    if look.n < 2 or look.control_n < 2:
        return None
    variance = look.variance / look.n + look.control_variance / look.control_n
    return variance if variance > 0 else None
