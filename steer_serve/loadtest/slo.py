"""SLO verdicts on vLLM's metrics, and the per-request limits vLLM's goodput counts against."""

from __future__ import annotations

from steer_serve.loadtest.scenario import SLO

REPORTED_PERCENTILES = (50.0, 90.0, 99.0)
GOODPUT_METRICS = ("ttft", "tpot", "e2el")  # vLLM's goodput knows these (ITL is per token)


def percentiles(slo: SLO | None) -> list[float]:
    wanted = set(REPORTED_PERCENTILES)
    if slo is not None:
        wanted |= {t.percentile for t in slo.targets().values()}
    return sorted(wanted)


def goodput_limits(slo: SLO | None) -> dict[str, float]:
    """vLLM's `goodput_config_dict`: a request is good when each of these is within its limit (ms)."""
    if slo is None:
        return {}
    return {m: t.max_ms for m, t in slo.targets().items() if m in GOODPUT_METRICS}


def metric_key(metric: str, percentile: float) -> str:
    return f"p{percentile:g}_{metric}_ms"  # vLLM's result key, e.g. p99_ttft_ms


def goodput_share(metrics: dict[str, float]) -> float:
    return metrics["good"] / metrics["sent"] if metrics["sent"] else 0.0


def verdicts(slo: SLO | None, metrics: dict[str, float]) -> list[dict[str, object]]:
    """One row per objective: what was asked, what was measured, met or not."""
    if slo is None:
        return []
    rows: list[dict[str, object]] = []
    for metric, target in slo.targets().items():
        value = metrics[metric_key(metric, target.percentile)]
        rows.append({"objective": f"{metric} p{target.percentile:g} <= {target.max_ms:g} ms",
                     "measured": value, "met": metrics["completed"] > 0 and value <= target.max_ms})
    if slo.min_goodput is not None:
        share = goodput_share(metrics)
        rows.append({"objective": f"goodput >= {slo.min_goodput:.0%} of requests", "measured": share,
                     "met": share >= slo.min_goodput})
    return rows


def all_met(rows: list[dict[str, object]]) -> bool:
    return all(bool(r["met"]) for r in rows)
