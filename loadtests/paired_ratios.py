"""Paired throughput ratios between any two variants of a compare.py report, with a confidence interval.

    .venv/bin/python -m loadtests.paired_ratios loadtests/reports/sae-clamp-cost/report.json \
        sae-clamp-8-distinct-32/plain-vllm sae-clamp-8-distinct-32/plugin-unsteered

The report gives each variant's ratio to one baseline; this gives any pair (e.g. a steered variant
against the same server unsteered). Per repeat: variant / other of the same repeat; median, min-max
and a 95% t-interval of the geometric mean (scipy) over the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from scipy import stats


def paired(runs: list[dict], variant: str, other: str, metric: str = "output_throughput") -> np.ndarray:
    by = {(run["variant"], run["repeat"]): run["result"][metric] for run in runs}
    return np.array([value / by[(other, repeat)] for (name, repeat), value in sorted(by.items())
                     if name == variant and (other, repeat) in by])


def describe(ratios: np.ndarray) -> str:
    logs = np.log(ratios)
    interval = ""
    if len(logs) > 1:
        low, high = stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=stats.sem(logs))
        interval = f"; geometric mean {np.exp(logs.mean()):.3f}, 95% CI {np.exp(low):.3f}-{np.exp(high):.3f}"
    return (f"per repeat {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f} "
            f"(min {ratios.min():.3f}, max {ratios.max():.3f}){interval}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path)
    parser.add_argument("pairs", nargs="+", help="VARIANT/OTHER")
    args = parser.parse_args()
    tables = json.loads(args.report.read_text())["tables"]
    for name, table in tables.items():
        for pair in args.pairs:
            variant, other = pair.split("/")
            ratios = paired(table["runs"], variant, other)
            if len(ratios):
                print(f"[{name}] {variant} / {other}: {describe(ratios)}")


if __name__ == "__main__":
    main()
