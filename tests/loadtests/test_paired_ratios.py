"""Paired ratios pool several report files, pair only within one run's repeat, and bound the median."""

from __future__ import annotations

import pytest

from loadtests.paired_ratios import interval, markdown, paired


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
