"""`make loadtest`'s summary: the steer-serve/plain ratios read back from each run's regression.json,
for `all` and `unsteered`, and a missing report said as such (not a blank row)."""

from __future__ import annotations

import json

from loadtests.scenario_pair import SUMMARY_FIGURES, ratio_rows, write_summary


def regression(path, rows) -> None:
    path.mkdir(parents=True)
    (path / "regression.json").write_text(json.dumps(
        [{"load": "closed", "class": c, "figure": f, "old": 1.0, "new": r, "ratio": r, "regressed": False}
         for c, f, r in rows]))


def test_summary_has_the_ratios_per_run_and_class(tmp_path) -> None:
    regression(tmp_path / "steer-serve", [("all", f, 1.0 + i / 100) for i, f in enumerate(SUMMARY_FIGURES)])
    regression(tmp_path / "mixed-batch", [("all", "p50_ttft_ms", 1.25), ("unsteered", "p50_ttft_ms", 1.5),
                                          ("gloomy-0.4", "p50_ttft_ms", 9.0)])
    for name in ("plain-vllm", "steer-serve"):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "report.json").write_text(json.dumps({"runs": [{"overall": {"p50_ttft_ms": 10.0}}]}))
    text = write_summary(tmp_path, ["steer-serve", "mixed-batch", "absent"], "python -m x").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows[0] == "| steer-serve | all | " + " | ".join(f"{1 + i / 100:.2f}" for i in range(len(SUMMARY_FIGURES))) + " |"
    assert rows[1].startswith("| mixed-batch | all | 1.25 | -") and rows[2].startswith("| mixed-batch | unsteered | 1.50 |")
    regression(tmp_path / "classes", [("unsteered", "output_throughput", 0.5), ("unsteered", "p50_tpot_ms", 1.1)])
    (row,) = [line for line in ratio_rows(tmp_path, ["classes"]) if line.startswith("| classes")]
    assert row.endswith("| 1.10 | - | - | - | - |")  # a class's throughput ratio is not shown (its share only)
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert "9.00" not in text  # steered classes have no plain-vLLM counterpart in the summary
    assert rows[3] == "| absent | (no report: see the log) |" and "`python -m x`" in text
