"""Results from the roll-ups on both backends, checked against numpy/scipy on the same rows:
per-arm counts, quantiles (within the sketch's 0.5 %), SRM, feedback joined by request id (last value wins), sequential
p-values and confidence sequences recomputed from the raw values at every look, Holm, and
guardrails that flag a slower arm; the report (markdown, JSON, PNG) and `ab report/import/export`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from steer_serve.cli import main
from steer_serve.experiments import latency_sketch, sequential
from steer_serve.experiments.config import load_experiment
from steer_serve.experiments.report import render_markdown, render_png
from steer_serve.experiments.results import compute_results
from steer_serve.experiments.stats import holm
from steer_serve.experiments.store import ExperimentStore
from harness.experiments import experiment, exposure_row, feedback_row, two_arms, write_experiments

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]
T0 = 1_700_000_000.0


@pytest.fixture
def filled(store_url, tmp_path):
    """300 control and 300 treatment requests from 150 units each, over 600 s; the treatment is
    slower; feedback on all of them (liked sent twice, the second value wins)."""
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD), version=2))
    store = ExperimentStore(store_url)
    store.migrate()
    rng = np.random.default_rng(1)
    data = {"rating": {"control": rng.normal(3.0, 1.0, 300), "treatment": rng.normal(3.4, 1.0, 300)},
            "liked": {"control": rng.random(300) < 0.30, "treatment": rng.random(300) < 0.40},
            "latency": {"control": rng.uniform(0.1, 1.0, 300), "treatment": rng.uniform(0.1, 1.0, 300) + 0.5},
            "ts": {arm: T0 + np.sort(rng.uniform(0, 600, 300)) for arm in ("control", "treatment")}}
    rows, notes = [], []
    for offset, arm in ((0, "control"), (1000, "treatment")):
        for i in range(300):
            rid = f"chatcmpl-{offset + i}"
            rows.append(exposure_row(offset + i, arm, version=2, ts=float(data["ts"][arm][i]),
                                     latency_s=float(data["latency"][arm][i])))
            notes += [feedback_row(rid, "rating", float(data["rating"][arm][i]), ts=T0 + 700),
                      feedback_row(rid, "liked", not data["liked"][arm][i], ts=T0 + 700),
                      feedback_row(rid, "liked", bool(data["liked"][arm][i]), ts=T0 + 800)]
    rows += [exposure_row(5000, "control", version=2, outcome="killed", assigned_arm="treatment", ts=T0 + 5),
             exposure_row(5001, "treatment", version=1, ts=T0 + 5),  # another version: not analysed
             exposure_row(5002, "treatment", version=2, error=True, status=500, ts=T0 + 5, unit="u1-treatment")]
    notes.append(feedback_row("chatcmpl-unknown", "rating", 1.0))
    store.insert_exposures(rows)
    store.insert_feedback(notes)
    return directory, store, data


def _reference(results, metric: str, control: np.ndarray, treated: np.ndarray, data) -> list:
    """The sequential trajectory recomputed with numpy at the result's own look times."""
    row = next(m for m in [*results.metrics, *results.guardrails] if m.metric == metric)
    looks = []
    for point in row.trajectory:
        t, c = treated[data["ts"]["treatment"] < point.ts], control[data["ts"]["control"] < point.ts]
        looks.append(sequential.Look(len(t), t.mean(), t.var(ddof=1), len(c), c.mean(), c.var(ddof=1)))
    return row, sequential.trajectory(looks)


def test_results_agree_with_numpy_on_the_same_rows(filled) -> None:
    directory, store, data = filled
    results = compute_results(load_experiment(directory / "e.yaml"), store)
    control, treatment = results.arms
    assert (control.requests, control.units, control.killed) == (300, 150, 0)
    assert (treatment.requests, treatment.units, treatment.errors, treatment.killed) == (301, 150, 1, 1)
    for point in ("p50", "p95", "p99"):
        expected = np.quantile(data["latency"]["control"], int(point[1:]) / 100)
        assert control.latency_s[point] == pytest.approx(expected, rel=latency_sketch.ALPHA)
    assert results.sample_ratio.chi2 == pytest.approx(sps.chisquare([150, 150]).statistic)
    assert results.feedback_unmatched == 1
    for metric in ("rating", "liked"):
        values = {arm: data[metric][arm].astype(float) for arm in ("control", "treatment")}
        row, reference = _reference(results, metric, values["control"], values["treatment"], data)
        assert row.kind == ("binary" if metric == "liked" else "numeric") and row.n == row.control_n == 300
        assert len(row.trajectory) >= 30
        final = reference[-1]
        assert (row.difference, row.ci_low, row.ci_high, row.p_value) == pytest.approx(
            (final.difference, final.ci_low, final.ci_high, final.p_value), rel=1e-9)
        assert row.mean == pytest.approx(values["treatment"].mean())
    assert [m.p_adjusted for m in results.metrics] == pytest.approx(holm([m.p_value for m in results.metrics]))


def test_guardrails_flag_the_slower_arm_only(filled) -> None:
    directory, store, data = filled
    results = compute_results(load_experiment(directory / "e.yaml"), store)
    guards = {g.metric: g for g in results.guardrails}
    assert set(guards) == {"error_rate", "latency_above_control_p95", "ttft_above_control_p95", "output_tokens",
                           "finish_length_share"}
    slow = guards["latency_above_control_p95"]
    threshold = results.arms[0].latency_s["p95"]  # the sketch's (within 0.5 % of numpy's)
    assert threshold == pytest.approx(np.quantile(data["latency"]["control"], 0.95), rel=latency_sketch.ALPHA)
    assert slow.mean == pytest.approx((data["latency"]["treatment"] > threshold).mean())
    assert slow.degraded and slow.difference > 0.3
    assert not any(g.degraded for name, g in guards.items() if name != "latency_above_control_p95")
    assert guards["error_rate"].n == 301 and guards["error_rate"].mean == pytest.approx(1 / 301)


def test_an_empty_experiment_has_no_comparisons(store_url, tmp_path) -> None:
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD)))
    store = ExperimentStore(store_url)
    store.migrate()
    results = compute_results(load_experiment(directory / "e.yaml"), store)
    assert results.metrics == [] and results.guardrails == [] and results.sample_ratio is None
    assert "No feedback joined yet." in render_markdown(results)


def test_report_markdown_png_and_cli(filled, tmp_path, capsys) -> None:
    directory, store, _ = filled
    url = store.engine.url.render_as_string(hide_password=False)
    results = compute_results(load_experiment(directory / "e.yaml"), store)
    markdown = render_markdown(results)
    assert "| control (control) | 1 | 150 | 300 |" in markdown and "**DEGRADED**" in markdown and "mSPRT" in markdown
    assert render_png(results, tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["ab", "report", "e", "--experiments", str(directory), "--experiments-db", url,
                 "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == markdown.strip()
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"e.md", "e.json", "e.png"}
    assert json.loads((tmp_path / "out" / "e.json").read_text())["guardrails"][1]["degraded"] is True
    assert main(["ab", "report", "missing", "--experiments", str(directory), "--experiments-db", url]) == 2


def test_export_then_import_into_another_store_gives_the_same_results(filled, tmp_path) -> None:
    directory, store, _ = filled
    url = store.engine.url.render_as_string(hide_password=False)
    for fmt in ("jsonl", "csv"):
        assert main(["ab", "export", "--experiments", str(directory), "--experiments-db", url, "--format", fmt,
                     "--out", str(tmp_path / "dump")]) == 0
    assert len((tmp_path / "dump" / "exposures.csv").read_text().splitlines()) == 1 + 603
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    args = ["ab", "import", "--experiments", str(directory), "--experiments-db", copy,
            "--exposure-log", str(tmp_path / "dump" / "exposures.jsonl"),
            "--feedback-log", str(tmp_path / "dump" / "feedback.jsonl")]
    assert main(args) == 0 and main(args) == 0  # the second import adds nothing
    config = load_experiment(directory / "e.yaml")
    assert _rounded(compute_results(config, ExperimentStore(copy))) == _rounded(compute_results(config, store))


def _rounded(results) -> str:
    """The results as JSON with floats to 10 significant digits (backends sum in different orders)."""
    def walk(value):
        if isinstance(value, float):
            return float(f"{value:.10g}")
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value
    return json.dumps(walk(results.model_dump()), sort_keys=True)


def test_import_of_old_jsonl_logs_is_idempotent(tmp_path, capsys) -> None:
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD)))
    exposures = [exposure_row(i, "control") for i in range(5)] + [{**exposure_row(9, "control"), "request_id": None}]
    (directory / "exposures.jsonl").write_text("\n".join(json.dumps(r) for r in exposures) + "\n{torn")
    old_feedback = [{"request_id": "chatcmpl-1", "metric": "liked", "value": True, "ts": T0},
                    {"request_id": "chatcmpl-2", "metric": "rating", "value": 4.5, "ts": T0}, {"bad": 1}]
    (directory / "feedback.jsonl").write_text("\n".join(json.dumps(r) for r in old_feedback) + "\n")
    assert main(["ab", "import", "--experiments", str(directory)]) == 0
    assert "exposures 6 new of 6, feedback 2 new of 2, 1 invalid lines skipped" in capsys.readouterr().out
    assert main(["ab", "import", "--experiments", str(directory)]) == 0
    assert "exposures 0 new of 6, feedback 0 new of 2" in capsys.readouterr().out
