"""A seconds-long run of the load-test harness against real servers, so it cannot rot."""

from __future__ import annotations

import pytest

from loadtests import workloads as wl
from loadtests.report import summarise, write_report
from loadtests.vllm_bench import run_benchmark

pytestmark = pytest.mark.slow

TINY = wl.ModelSpec("tiny", 128, 4)


def test_harness_measures_plain_and_steered(tiny_eager_server, tiny_plain_server, tmp_path) -> None:
    runs = []
    variants = [("plain", tiny_plain_server, wl.unsteered),
                ("distinct-4", tiny_eager_server, wl.distinct_vectors(TINY, 4, 2))]
    for name, server, steering in variants:
        requests = wl.build_requests(steering, num_requests=4, input_len=16, output_len=8, seed=len(runs))
        result = run_benchmark(server.url, server.model, requests, concurrency=4)
        assert result["completed"] == 4 and result["failed"] == 0, result["errors"]
        assert result["total_output_tokens"] == 32 and result["p50_ttft_ms"] > 0
        runs.append({"variant": name, "repeat": 0, "result": result})

    summary = summarise(runs, {"plain": "plain", "distinct-4": "plain"})
    assert summary["plain"]["ratio_to_baseline"]["output_throughput"]["median"] == 1.0
    expected = runs[1]["result"]["output_throughput"] / runs[0]["result"]["output_throughput"]
    assert summary["distinct-4"]["ratio_to_baseline"]["output_throughput"]["median"] == pytest.approx(expected)
    sweeps = {"smoke": {"distinct-4": {"series": "distinct", "axis": "K", "x": 4}}}
    report = write_report(tmp_path, "smoke", {"command": "test"}, {"smoke": {"runs": runs, "summary": summary}},
                          sweeps=sweeps)
    assert "distinct-4" in report.read_text() and (tmp_path / "smoke.png").stat().st_size > 0
    assert (tmp_path / "smoke-sweep.png").stat().st_size > 0
