"""Per-arm results of one experiment, computed from the exposure and feedback logs.

Only exposures of the experiment's current version (or the one asked for) with outcome
`assigned` are analysed: a new version usually means new weights, and mixing versions would
make the sample-ratio test meaningless; kill-switched requests were served control whatever
their arm, so they are counted apart. Feedback joins on request id; the last value sent for a
(request, metric) pair wins. The analysis unit for feedback is the request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from steer_serve.experiments import stats
from steer_serve.experiments.config import ExperimentConfig
from steer_serve.experiments.records import Exposure, Feedback

SRM_ALPHA = 0.001  # the conventional threshold for a sample ratio mismatch alarm


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


class MetricComparison(BaseModel):
    metric: str
    kind: Literal["binary", "numeric"]
    arm: str
    n: int
    control_n: int
    mean: float | None
    control_mean: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


class ExperimentResults(BaseModel):
    key: str
    version: int
    arms: list[ArmResult]
    sample_ratio: SampleRatioResult | None
    metrics: list[MetricComparison]
    feedback_unmatched: int
    skipped_records: int


def compute_results(config: ExperimentConfig, exposures: Iterable[dict[str, Any]],
                    feedback: Iterable[dict[str, Any]], version: int | None = None) -> ExperimentResults:
    version = config.version if version is None else version
    mine, skipped = _exposures_of(config.key, version, exposures)
    served = [e for e in mine if e.outcome == "assigned"]
    by_arm = {arm.name: [e for e in served if e.arm == arm.name] for arm in config.arms}
    arms = [_arm_result(arm, by_arm[arm.name], [e for e in mine if e.outcome == "killed" and e.assigned_arm == arm.name])
            for arm in config.arms]
    values, unmatched = _join_feedback({e.request_id: e.arm for e in served if e.request_id}, feedback)
    comparisons = [c for metric in sorted(values) for c in _compare(config, metric, values[metric])]
    return ExperimentResults(key=config.key, version=version, arms=arms, sample_ratio=_sample_ratio(config, arms),
                             metrics=comparisons, feedback_unmatched=unmatched, skipped_records=skipped)


def _exposures_of(key: str, version: int, records: Iterable[dict[str, Any]]) -> tuple[list[Exposure], int]:
    kept, skipped = [], 0
    for record in records:
        if record.get("experiment") != key or record.get("version") != version:
            continue
        try:
            kept.append(Exposure.model_validate(record))
        except ValidationError:
            skipped += 1
    return kept, skipped


def _arm_result(arm: Any, exposures: list[Exposure], killed: list[Exposure]) -> ArmResult:
    ok = [e for e in exposures if not e.error]
    tokens = [e.tokens for e in ok if e.tokens is not None]
    return ArmResult(
        name=arm.name, weight=arm.weight, control=arm.control, requests=len(exposures),
        units=len({e.unit for e in exposures}), errors=len(exposures) - len(ok), killed=len(killed),
        latency_s=stats.quantiles([e.latency_s for e in ok]),
        ttft_s=stats.quantiles([e.ttft_s for e in ok if e.ttft_s is not None]),
        mean_tokens=sum(tokens) / len(tokens) if tokens else None,
    )


def _sample_ratio(config: ExperimentConfig, arms: list[ArmResult]) -> SampleRatioResult | None:
    result = stats.sample_ratio([arm.units for arm in arms], [arm.weight for arm in arms])
    if result is None:
        return None
    names = [arm.name for arm in arms if arm.weight > 0]
    return SampleRatioResult(chi2=result.chi2, p_value=result.p_value, expected_units=dict(zip(names, result.expected)),
                             mismatch=result.p_value < SRM_ALPHA)


def _join_feedback(arm_of: dict[str, str], records: Iterable[dict[str, Any]]) -> tuple[dict[str, dict[str, list]], int]:
    """metric -> arm -> values (last value per request), and how many feedback records matched no exposure."""
    latest: dict[tuple[str, str], bool | float] = {}
    unmatched = 0
    for record in records:
        try:
            item = Feedback.model_validate(record)
        except ValidationError:
            continue
        if item.request_id not in arm_of:
            unmatched += 1
            continue
        latest[(item.metric, item.request_id)] = item.value
    values: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for (metric, request_id), value in latest.items():
        values[metric][arm_of[request_id]].append(value)
    return values, unmatched


def _compare(config: ExperimentConfig, metric: str, per_arm: dict[str, list]) -> list[MetricComparison]:
    binary = all(isinstance(v, bool) for vs in per_arm.values() for v in vs)
    control = per_arm.get(config.control_arm.name, [])
    rows = []
    for arm in config.arms:
        if arm.control:
            continue
        treated = per_arm.get(arm.name, [])
        if binary:
            diff = stats.two_proportions(sum(treated), len(treated), sum(control), len(control))
        else:
            diff = stats.welch([float(v) for v in treated], [float(v) for v in control])
        rows.append(MetricComparison(
            metric=metric, kind="binary" if binary else "numeric", arm=arm.name, n=len(treated), control_n=len(control),
            mean=_mean(treated), control_mean=_mean(control),
            difference=diff.difference if diff else None, ci_low=diff.ci_low if diff else None,
            ci_high=diff.ci_high if diff else None, p_value=diff.p_value if diff else None,
        ))
    return rows


def _mean(values: list) -> float | None:
    return sum(float(v) for v in values) / len(values) if values else None
