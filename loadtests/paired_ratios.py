"""Paired throughput ratios from one or more loadtests.compare report.json files (runs split over
several holds of the CPU lock): each variant against each baseline measured in the same repeat
of the same run, median, min-max and a 95% confidence interval (scipy: t-interval of the log
ratios, so the interval stays positive and multiplicative).

    .venv/bin/python -m loadtests.paired_ratios REPORT.json|logs/runs.jsonl [...] \
        --table observe-cost --baselines plain-vllm,plugin-unobserved
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy import stats

METRIC = "output_throughput"


def paired(reports: list[dict], table: str, variant: str, baseline: str) -> list[float]:
    """variant / baseline per repeat, over every report."""
    ratios = []
    for report in reports:
        runs = {(r["variant"], r["repeat"]): r["result"][METRIC] for r in report["tables"][table]["runs"]}
        ratios += [value / runs[(baseline, rep)] for (v, rep), value in runs.items()
                   if v == variant and runs.get((baseline, rep))]
    return ratios


def interval(ratios: list[float]) -> tuple[float, float]:
    logs = [math.log(r) for r in ratios]
    if len(logs) < 2:
        return float("nan"), float("nan")
    if max(logs) == min(logs):  # no spread: the t-interval is the point itself (scipy would give nan)
        return ratios[0], ratios[0]
    low, high = stats.t.interval(0.95, len(logs) - 1, loc=statistics.mean(logs), scale=stats.sem(logs))
    return math.exp(low), math.exp(high)


def markdown(reports: list[dict], table: str, baselines: list[str]) -> str:
    variants = list(dict.fromkeys(r["variant"] for report in reports for r in report["tables"][table]["runs"]))
    lines = ["| variant | tok/s median (min-max) | " + " | ".join(f"vs {b}: median (min-max) [95% CI], n"
                                                             for b in baselines) + " |",
             "|---|---|" + "---|" * len(baselines)]
    for variant in variants:
        values = [r["result"][METRIC] for report in reports for r in report["tables"][table]["runs"]
                  if r["variant"] == variant]
        cells = [f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"]
        for baseline in baselines:
            ratios = paired(reports, table, variant, baseline)
            low, high = interval(ratios)
            cells.append(f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) "
                         f"[{low:.3f}-{high:.3f}], {len(ratios)}" if variant != baseline and ratios else "1")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_report(path: Path) -> dict:
    """A report.json, or the runs.jsonl compare writes as it goes (what a run cut short leaves)."""
    if path.suffix != ".jsonl":
        return json.loads(path.read_text())
    tables: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        tables.setdefault(run.pop("table"), {"runs": []})["runs"].append(run)
    return {"tables": tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--table", default="observe-cost")
    parser.add_argument("--baselines", default="plain-vllm,plugin-unobserved")
    args = parser.parse_args()
    reports = [read_report(path) for path in args.reports]
    print(markdown(reports, args.table, args.baselines.split(",")), end="")


if __name__ == "__main__":
    main()
