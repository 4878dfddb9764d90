"""Results from logs: per-arm counts, SRM, latency quantiles, feedback joined by request id; the
markdown/PNG report and the `steer-serve ab report` CLI over the same files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from steer_serve.cli import main
from steer_serve.experiments.config import load_experiment
from steer_serve.experiments.jsonl_log import append_record, read_records
from steer_serve.experiments.records import Exposure, Feedback
from steer_serve.experiments.report import render_markdown, render_png
from steer_serve.experiments.results import compute_results
from harness.experiments import experiment, two_arms, write_experiments

ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]


def _exposure(i: int, arm: str, **changes) -> dict:
    record = Exposure(request_id=f"chatcmpl-{i}", experiment="e", version=2, arm=arm, assigned_arm=arm,
                      outcome="assigned", unit=f"unit{i % 150}-{arm}", fingerprint=None, model="m", stream=True,
                      status=200, error=False, ttft_s=0.01 * (i % 10), latency_s=0.1 * (i % 10) + 0.05,
                      tokens=8, tokens_source="chunks", finish_reason="length")
    return record.model_copy(update=changes).model_dump(mode="json")


@pytest.fixture
def logs(tmp_path):
    """300 control and 300 treatment requests from 150 units each, feedback on most of them."""
    directory = write_experiments(tmp_path / "exp", experiment("e", two_arms(ADD), version=2))
    rng = np.random.default_rng(1)
    ratings = {"control": rng.normal(3.0, 1.0, 300), "treatment": rng.normal(3.4, 1.0, 300)}
    likes = {"control": rng.random(300) < 0.30, "treatment": rng.random(300) < 0.40}
    exposures, feedback = directory / "exposures.jsonl", directory / "feedback.jsonl"
    for offset, arm in ((0, "control"), (1000, "treatment")):
        for i in range(300):
            append_record(exposures, _exposure(offset + i, arm))
            append_record(feedback, Feedback(request_id=f"chatcmpl-{offset + i}", metric="rating",
                                             value=float(ratings[arm][i])).model_dump(mode="json"))
            append_record(feedback, Feedback(request_id=f"chatcmpl-{offset + i}", metric="liked",
                                             value=not likes[arm][i]).model_dump(mode="json"))
            append_record(feedback, Feedback(request_id=f"chatcmpl-{offset + i}", metric="liked",
                                             value=bool(likes[arm][i])).model_dump(mode="json"))  # last one wins
    append_record(exposures, _exposure(5000, "control", outcome="killed", assigned_arm="treatment"))
    append_record(exposures, _exposure(5001, "treatment", version=1))  # another version: not analysed
    append_record(exposures, _exposure(5002, "treatment", error=True, status=500))
    append_record(feedback, Feedback(request_id="chatcmpl-unknown", metric="rating", value=1).model_dump(mode="json"))
    return directory, ratings, likes


def test_results_agree_with_scipy_on_the_joined_data(logs) -> None:
    directory, ratings, likes = logs
    config = load_experiment(directory / "e.yaml")
    results = compute_results(config, read_records(directory / "exposures.jsonl"), read_records(directory / "feedback.jsonl"))
    control, treatment = results.arms
    assert (control.requests, control.units, control.killed) == (300, 150, 0)
    assert (treatment.requests, treatment.units, treatment.errors, treatment.killed) == (301, 150, 1, 1)  # the failed request came from a known unit
    assert control.latency_s["p50"] == pytest.approx(np.quantile([0.1 * (i % 10) + 0.05 for i in range(300)], 0.5))
    assert results.sample_ratio.chi2 == pytest.approx(sps.chisquare([150, 150]).statistic)
    assert not results.sample_ratio.mismatch and results.feedback_unmatched == 1
    rating = next(m for m in results.metrics if m.metric == "rating")
    welch = sps.ttest_ind(ratings["treatment"], ratings["control"], equal_var=False)
    assert rating.kind == "numeric" and rating.p_value == pytest.approx(welch.pvalue)
    assert (rating.ci_low, rating.ci_high) == pytest.approx(tuple(welch.confidence_interval()))
    liked = next(m for m in results.metrics if m.metric == "liked")
    table = [[likes["treatment"].sum(), 300 - likes["treatment"].sum()], [likes["control"].sum(), 300 - likes["control"].sum()]]
    assert liked.kind == "binary" and liked.n == liked.control_n == 300
    assert liked.difference == pytest.approx(likes["treatment"].mean() - likes["control"].mean())
    assert liked.p_value == pytest.approx(sps.chi2_contingency(table, correction=False).pvalue)


def test_report_markdown_png_and_cli(logs, tmp_path, capsys) -> None:
    directory, _, _ = logs
    results = compute_results(load_experiment(directory / "e.yaml"), read_records(directory / "exposures.jsonl"),
                              read_records(directory / "feedback.jsonl"))
    markdown = render_markdown(results)
    assert "| control (control) | 1 | 150 | 300 |" in markdown and "Welch t" in markdown and "two-proportion z" in markdown
    assert render_png(results, tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["ab", "report", "e", "--experiments", str(directory), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == markdown.strip()
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"e.md", "e.json", "e.png"}
    assert main(["ab", "report", "missing", "--experiments", str(directory)]) == 2


def test_srm_alarm_when_one_arm_is_starved(tmp_path) -> None:
    directory = write_experiments(tmp_path, experiment("e", two_arms(ADD), version=2))
    records = [_exposure(i, "control", unit=f"c{i}") for i in range(600)] + [_exposure(i, "treatment", unit=f"t{i}") for i in range(400)]
    results = compute_results(load_experiment(directory / "e.yaml"), records, [])
    assert results.sample_ratio.mismatch and "MISMATCH" in render_markdown(results)
