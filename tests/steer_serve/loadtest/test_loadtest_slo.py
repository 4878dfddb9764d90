"""SLO verdicts, goodput limits, sweep knee and the regression gate."""

from __future__ import annotations

from steer_serve.loadtest import slo
from steer_serve.loadtest.baseline import compare
from steer_serve.loadtest.runner import sweep_summary
from steer_serve.loadtest.scenario import SLO

OBJECTIVES = SLO.model_validate({"ttft": {"max_ms": 100, "percentile": 90}, "itl": {"max_ms": 20},
                                 "min_goodput": 0.9})
METRICS = {"p90_ttft_ms": 80.0, "p99_itl_ms": 25.0, "completed": 10, "sent": 10, "good": 9}


def test_verdicts() -> None:
    rows = slo.verdicts(OBJECTIVES, METRICS)
    assert [r["met"] for r in rows] == [True, False, True]
    assert not slo.all_met(rows)
    assert slo.goodput_limits(OBJECTIVES) == {"ttft": 100}  # ITL is not a per-request limit in vLLM
    assert slo.percentiles(OBJECTIVES) == [50, 90, 99]


def test_no_completed_request_meets_nothing() -> None:
    rows = slo.verdicts(OBJECTIVES, {**METRICS, "completed": 0, "p90_ttft_ms": 0.0, "p99_itl_ms": 0.0, "good": 0})
    assert not any(r["met"] for r in rows)


def test_sweep_knee_is_last_passing_load_before_first_failure() -> None:
    runs = [{"rate": 1.0, "slo_met": True}, {"rate": 2.0, "slo_met": True}, {"rate": 4.0, "slo_met": False},
            {"rate": 8.0, "slo_met": True}]
    assert sweep_summary(runs)["max_rate_meeting_slo"] == 2.0
    assert sweep_summary([{"rate": 1.0, "slo_met": False}])["max_rate_meeting_slo"] is None


def report(ttft: float, throughput: float) -> dict:
    metrics = {"p50_ttft_ms": ttft, "output_throughput": throughput, "goodput_share": 1.0}
    return {"runs": [{"rate": 2.0, "overall": metrics, "classes": {"a": metrics}}]}


def test_regression_gate() -> None:
    rows = compare(report(105, 100), report(100, 100), 0.1)
    assert len(rows) == 6 and not any(r["regressed"] for r in rows)
    rows = compare(report(120, 85), report(100, 100), 0.1)
    regressed = {(r["class"], r["figure"]) for r in rows if r["regressed"]}
    assert regressed == {(g, f) for g in ("all", "a") for f in ("p50_ttft_ms", "output_throughput")}
    assert compare(report(120, 85), {"runs": [{"rate": 4.0, "overall": {}, "classes": {}}]}, 0.1) == []
