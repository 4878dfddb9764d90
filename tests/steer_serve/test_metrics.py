"""Metrics: one module, `steer_serve:` names, bounded labels; the recorder fills them per arm."""

from __future__ import annotations

import json

import pytest

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from steer_serve import metrics
from sqlalchemy import select

from steer_serve.experiments.db_schema import exposures
from steer_serve.experiments.outbox import Outbox
from steer_serve.experiments.request_recorder import RequestRecorder
from steer_serve.experiments.store_writer import StoreWriter
from steer_serve.experiments.response_observer import Observation
from steer_serve_vllm.api.gateway import RequestGateway
from harness.experiments import experiment, selector, two_arms, write_experiments
from harness.libraries import resolver, vector

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]


def test_every_metric_is_prefixed_and_in_the_default_registry() -> None:
    defined = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert len(defined) == 15
    registered = {name for collector in REGISTRY._collector_to_names for name in REGISTRY._collector_to_names[collector]}
    for metric in defined:
        assert metric._name.startswith("steer_serve:"), metric._name
        assert {metric._name, f"{metric._name}_total"} & registered, metric._name
        assert not {"user", "unit", "request_id"} & set(metric._labelnames)


def test_rejection_reasons_are_a_fixed_vocabulary() -> None:
    assert metrics.rejection_reason(400, "steering.interventions[3].layers") == "layers"
    assert metrics.rejection_reason(400, "steering.interventions[0].vector") == "vector"
    assert metrics.rejection_reason(400, "steerng") == "other"
    assert metrics.rejection_reason(400, "vllm_xargs.steering") == "steering"
    assert metrics.rejection_reason(413, None) == "body_too_large"


def test_recorder_fills_series_per_arm_and_logs_only_experiment_requests(tmp_path) -> None:
    resolve = resolver(tmp_path, v=vector())
    arms = selector(write_experiments(tmp_path / "exp", experiment("rec", two_arms(ADD))), resolve)
    gateway = RequestGateway(resolve, arms)
    writer = StoreWriter(arms.control.store, Outbox(tmp_path / "outbox", 1 << 20))
    recorder = RequestRecorder("tiny", writer)
    for i, user in enumerate(("alice-secret", "bob-secret", "carol-secret", "dave-secret", "erin-secret")):
        seen = Observation(f"chatcmpl-{i}", 200, False, True, 0.02, 0.3, 5, "chunks", "length")
        decision = gateway.prepare("/v1/chat/completions", json.dumps({"user": user}).encode(), {})
        recorder.record(decision.assignment, decision.fingerprint, seen)
    recorder.record(None, None, seen)  # a request outside any experiment: metrics only
    writer.flush()
    records = [dict(row._mapping) for row in arms.control.store.read(select(exposures))]
    assert len(records) == 5 and {r["arm"] for r in records} == {"control", "treatment"}
    text = generate_latest(REGISTRY).decode()
    assert 'steer_serve:requests_total{arm="treatment",experiment="rec",model="tiny",status="200"}' in text
    assert 'steer_serve:time_to_first_token_seconds_count{arm="control",experiment="rec"}' in text
    assert 'steer_serve:generation_tokens_total{arm="none",experiment="none"}' in text
    assert "secret" not in text and "secret" not in json.dumps(records)


@pytest.mark.parametrize("name", ["steer-serve-experiments.json", "steer-serve-probes.json"])
def test_grafana_dashboard_only_queries_metrics_and_labels_we_export(name: str) -> None:
    import re

    from steer_serve.settings import REPO_CONFIGS

    dashboard = json.loads((REPO_CONFIGS / "grafana" / name).read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exported = {value._name: value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)}
    for expr in exprs:
        used = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in re.findall(r"steer_serve:[a-z0-9_]+", expr)}
        assert used and used <= set(exported), used - set(exported)
        labels = {label for group in re.findall(r"by \(([^)]*)\)", expr) for label in re.split(r",\s*", group)}
        labels |= set(re.findall(r"([a-z_]+)(?:=~|!=|=)\"", expr))
        known = {label for metric in used for label in exported[metric]._labelnames} | {"le"}
        assert labels <= known, (expr, labels - known)
    assert all("arm" in e for e in exprs if "experiment=" in e and "kill" not in e)  # arms side by side
    # prometheus_client exports no _sum for a histogram with negative buckets: such a panel stays empty
    assert not any("probe_mean_projection_sum" in e for e in exprs)


def test_rejection_reasons_cover_the_newer_intervention_fields() -> None:
    assert metrics.rejection_reason(400, "steering.interventions[1].mask") == "mask"
    assert metrics.rejection_reason(400, "steering.interventions[0].value") == "value"
