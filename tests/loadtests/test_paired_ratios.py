"""Paired ratios pool several report files, pair only within one run's repeat, and bound the median."""

from __future__ import annotations

import json

import pytest

from loadtests.paired_ratios import read_report, interval, markdown, paired


def _report(values: dict[tuple[str, int], float]) -> dict:
    runs = [{"variant": v, "repeat": rep, "result": {"output_throughput": x}} for (v, rep), x in values.items()]
    return {"tables": {"t": {"runs": runs}}}


def test_pairs_within_each_report_and_pools_them() -> None:
    first = _report({("plain", 0): 100.0, ("obs", 0): 90.0, ("plain", 1): 200.0, ("obs", 1): 190.0})
    second = _report({("plain", 0): 50.0, ("obs", 0): 49.0, ("obs", 1): 10.0})  # repeat 1 has no baseline
    assert paired([first, second], "t", "obs", "plain") == pytest.approx([0.9, 0.95, 0.98])
    low, high = interval([0.9, 0.95, 0.98])
    assert low < 0.9 and 0.98 < high < 1.2
    table = markdown([first, second], "t", ["plain"])
    assert "| obs | 69.5 (10.0-190.0) | 0.950 (0.900-0.980)" in table and "| plain |" in table


def test_reads_the_runs_a_cut_run_left(tmp_path) -> None:
    lines = [{"table": "t", "variant": v, "repeat": 0, "result": {"output_throughput": x}}
             for v, x in (("plain", 100.0), ("obs", 97.0))]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert paired([read_report(path)], "t", "obs", "plain") == pytest.approx([0.97])
