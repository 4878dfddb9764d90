"""Per-arm results of one experiment version, from the experiment store's roll-ups.

Only exposures of the experiment's current version (or the one asked for) with outcome
`assigned` are analysed: a new version usually means new weights, and mixing versions would make
the sample-ratio test meaningless; kill-switched requests were served control whatever their
arm, so they are counted apart. Feedback joins on request id; the last value sent for a
(request, metric) pair wins. The analysis unit for feedback and guardrails is the request.

Every comparison (arm minus control) is sequential (`sequential.py`): an always-valid p-value
and a confidence sequence, evaluated at up to 40 equally spaced looks over the experiment so far
(`time_buckets`),
so the report can draw them over time and an operator may look whenever they like. Holm's
correction runs over arms x feedback metrics, and separately over arms x guardrails; a
guardrail is flagged `degraded` when the arm is significantly worse (higher) after correction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel

from steer_serve.experiments import results_queries as queries
from steer_serve.experiments import sequential, stats
from steer_serve.experiments.config import Arm, ExperimentConfig
from steer_serve.experiments.results_queries import Sums
from steer_serve.experiments.store import ExperimentStore
from steer_serve.experiments.time_buckets import Timeline

SRM_ALPHA = 0.001  # the conventional threshold for a sample ratio mismatch alarm
ALPHA = 0.05
METHOD = "mSPRT, normal mixture (Johari et al. 2022, 'Always Valid Inference'); Holm across arms x metrics"
GUARDRAILS: dict[str, Literal["binary", "numeric"]] = {
    "error_rate": "binary", "latency_above_control_p95": "binary", "ttft_above_control_p95": "binary",
    "output_tokens": "numeric", "finish_length_share": "binary",
}


class ArmResult(BaseModel):
    name: str
    weight: float
    control: bool
    requests: int
    units: int
    errors: int
    killed: int
    latency_s: dict[str, float] | None
    ttft_s: dict[str, float] | None
    mean_tokens: float | None


class SampleRatioResult(BaseModel):
    chi2: float
    p_value: float
    expected_units: dict[str, float]
    mismatch: bool


class TrajectoryPoint(BaseModel):
    ts: float
    n: int
    control_n: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float


class Comparison(BaseModel):
    metric: str
    kind: Literal["binary", "numeric"]
    arm: str
    n: int
    control_n: int
    mean: float | None
    control_mean: float | None
    difference: float | None
    ci_low: float | None  # the confidence sequence now (valid at any look)
    ci_high: float | None
    p_value: float | None  # always-valid p-value
    p_adjusted: float | None = None  # Holm within its family
    significant: bool = False
    trajectory: list[TrajectoryPoint]


class GuardrailComparison(Comparison):
    degraded: bool = False


class ExperimentResults(BaseModel):
    key: str
    version: int
    alpha: float
    method: str
    arms: list[ArmResult]
    sample_ratio: SampleRatioResult | None
    metrics: list[Comparison]
    guardrails: list[GuardrailComparison]
    feedback_unmatched: int


def compute_results(config: ExperimentConfig, store: ExperimentStore, version: int | None = None,
                    alpha: float = ALPHA) -> ExperimentResults:
    version = config.version if version is None else version
    rows, killed = queries.arm_rows(store, config.key, version), queries.killed_counts(store, config.key, version)
    arms = [_arm_result(arm, rows.get(arm.name), killed.get(arm.name, 0)) for arm in config.arms]
    span = (min(r.first_ts for r in rows.values()), max(r.last_ts for r in rows.values())) if rows else None
    metrics: list[Comparison] = []
    guardrails: list[GuardrailComparison] = []
    if span is not None:
        timeline = Timeline.over(*span)
        control = rows.get(config.control_arm.name)
        latency_p95 = control.latency[queries.P95] if control and control.latency else None
        ttft_p95 = control.ttft[queries.P95] if control and control.ttft else None
        guard = queries.guardrail_sums(store, config.key, version, timeline, latency_p95, ttft_p95)
        guardrails = [GuardrailComparison(**c.model_dump()) for name, kind in GUARDRAILS.items()
                      for c in _compare(config, name, kind, lambda arm, b, name=name: guard.get((arm, b), {}).get(name), timeline, alpha)]
        sums, binary = queries.feedback_sums(store, config.key, version, timeline)
        metrics = [c for metric in sorted(binary) for c in _compare(
            config, metric, "binary" if binary[metric] else "numeric",
            lambda arm, b, metric=metric: sums.get((metric, arm, b)), timeline, alpha)]
        _correct(metrics, alpha)
        _correct(guardrails, alpha)
        for row in guardrails:
            row.degraded = row.significant and (row.difference or 0) > 0
    return ExperimentResults(key=config.key, version=version, alpha=alpha, method=METHOD, arms=arms,
                             sample_ratio=_sample_ratio(arms), metrics=metrics, guardrails=guardrails,
                             feedback_unmatched=queries.unmatched_feedback(store))


def _compare(config: ExperimentConfig, metric: str, kind: Literal["binary", "numeric"],
             sums_of: Callable[[str, int], Sums | None], timeline: Timeline, alpha: float) -> list[Comparison]:
    control = config.control_arm.name
    control_looks = _cumulate([sums_of(control, b) for b in range(timeline.looks)])
    rows = []
    for arm in config.arms:
        if arm.control:
            continue
        arm_looks = _cumulate([sums_of(arm.name, b) for b in range(timeline.looks)])
        looks = [sequential.Look(a.n, *_moments(a), c.n, *_moments(c)) for a, c in zip(arm_looks, control_looks)]
        points = sequential.trajectory(looks, alpha)
        trajectory = [TrajectoryPoint(ts=timeline.end_of(b), n=looks[b].n, control_n=looks[b].control_n,
                                      difference=p.difference, ci_low=p.ci_low, ci_high=p.ci_high, p_value=p.p_value)
                      for b, p in enumerate(points) if p is not None]
        last, final = looks[-1], trajectory[-1] if trajectory else None
        rows.append(Comparison(
            metric=metric, kind=kind, arm=arm.name, n=last.n, control_n=last.control_n,
            mean=last.mean if last.n else None, control_mean=last.control_mean if last.control_n else None,
            difference=final.difference if final else None, ci_low=final.ci_low if final else None,
            ci_high=final.ci_high if final else None, p_value=final.p_value if final else None, trajectory=trajectory))
    return rows


def _cumulate(per_bucket: list[Sums | None]) -> list[Sums]:
    out, n, total, squares = [], 0, 0.0, 0.0
    for sums in per_bucket:
        if sums is not None:
            n, total, squares = n + sums.n, total + sums.total, squares + sums.squares
        out.append(Sums(n, total, squares))
    return out


def _moments(sums: Sums) -> tuple[float, float]:
    """Mean and sample variance (ddof=1) from n, sum and sum of squares."""
    if sums.n == 0:
        return 0.0, 0.0
    mean = sums.total / sums.n
    variance = max(0.0, (sums.squares - sums.n * mean * mean) / (sums.n - 1)) if sums.n > 1 else 0.0
    return mean, variance


def _correct(rows: list, alpha: float) -> None:
    for row, adjusted in zip(rows, stats.holm([row.p_value for row in rows])):
        row.p_adjusted = adjusted
        row.significant = adjusted is not None and adjusted < alpha


def _arm_result(arm: Arm, row: queries.ArmRow | None, killed: int) -> ArmResult:
    def named(values: list[float] | None) -> dict[str, float] | None:
        return None if values is None else {f"p{round(q * 100)}": v for q, v in zip(queries.QUANTILE_POINTS, values)}
    return ArmResult(name=arm.name, weight=arm.weight, control=arm.control, requests=row.requests if row else 0,
                     units=row.units if row else 0, errors=row.errors if row else 0, killed=killed,
                     latency_s=named(row.latency) if row else None, ttft_s=named(row.ttft) if row else None,
                     mean_tokens=row.mean_tokens if row else None)


def _sample_ratio(arms: list[ArmResult]) -> SampleRatioResult | None:
    result = stats.sample_ratio([arm.units for arm in arms], [arm.weight for arm in arms])
    if result is None:
        return None
    names = [arm.name for arm in arms if arm.weight > 0]
    return SampleRatioResult(chi2=result.chi2, p_value=result.p_value, expected_units=dict(zip(names, result.expected)),
                             mismatch=result.p_value < SRM_ALPHA)
