"""Summaries (median and spread over interleaved repeats), markdown tables, the report files.

Ratios are paired: each repeat's variant is divided by its baseline from the same repeat, and
the median of those per-repeat ratios is reported. On a noisy machine this cancels slow drift
(another process waking up, thermal state) that a ratio of two medians would keep.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from loadtests.plots import plot_sweeps, plot_table

METRIC_COLUMNS = (
    ("output_throughput", "tok/s"),
    ("p50_ttft_ms", "TTFT p50 ms"),
    ("p99_ttft_ms", "TTFT p99 ms"),
    ("p50_tpot_ms", "TPOT p50 ms"),
    ("p50_e2el_ms", "E2E p50 ms"),
)
RATIO_METRICS = ("output_throughput", "p50_ttft_ms")


def summarise(runs: list[dict[str, Any]], baselines: dict[str, str]) -> dict[str, dict[str, Any]]:
    """runs: {"variant", "repeat", "result"}; baselines: variant -> its baseline variant.

    Per variant: median, min, max of each metric, and the median of per-repeat ratios to its baseline."""
    results = {(run["variant"], run["repeat"]): run["result"] for run in runs}
    variants = list(dict.fromkeys(run["variant"] for run in runs))
    summary = {}
    for variant in variants:
        own = [r for (v, _), r in results.items() if v == variant]
        summary[variant] = {
            "baseline": baselines[variant],
            "repeats": len(own),
            "median": {k: statistics.median(r[k] for r in own) for k, _ in METRIC_COLUMNS},
            "min": {k: min(r[k] for r in own) for k, _ in METRIC_COLUMNS},
            "max": {k: max(r[k] for r in own) for k, _ in METRIC_COLUMNS},
            "ratio_to_baseline": {k: _paired_ratio(results, variant, baselines[variant], k) for k in RATIO_METRICS},
            "failed": sum(r.get("failed", 0) for r in own),
        }
    return summary


def _paired_ratio(results: dict[tuple[str, int], dict], variant: str, baseline: str, key: str) -> dict[str, float]:
    ratios = [r[key] / results[(baseline, rep)][key] for (v, rep), r in results.items()
              if v == variant and (baseline, rep) in results and results[(baseline, rep)][key]]
    if not ratios:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    header = ("| variant | vs | runs | " + " | ".join(label for _, label in METRIC_COLUMNS)
              + " | tok/s ratio | TTFT p50 ratio | failed |")
    lines = [header, "|" + "---|" * (len(METRIC_COLUMNS) + 6)]
    for variant, s in summary.items():
        cells = [f"{s['median'][k]:.1f} ({s['min'][k]:.1f}-{s['max'][k]:.1f})" for k, _ in METRIC_COLUMNS]
        ratios = [_ratio_cell(s["ratio_to_baseline"][k]) for k in RATIO_METRICS]
        lines.append(f"| {variant} | {s['baseline']} | {s['repeats']} | " + " | ".join(cells + ratios)
                     + f" | {s['failed']} |")
    return "\n".join(lines) + (
        "\n\nCells: median over interleaved repeats (min-max). Ratios: median of per-repeat ratios to the "
        "baseline in column `vs` measured in the same repeat (min-max).\n")


def _ratio_cell(ratio: dict[str, float]) -> str:
    return f"**{ratio['median']:.3f}** ({ratio['min']:.3f}-{ratio['max']:.3f})"


def write_report(out_dir: Path, title: str, context: dict[str, Any], tables: dict[str, dict],
                 sweeps: dict[str, dict[str, dict]] | None = None, preface: str = "") -> Path:
    """tables: name -> {"runs": [...], "summary": {...}}; sweeps: name -> variant -> Sweep fields."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps({"context": context, "tables": tables}, indent=1, default=str))
    parts = [f"# {title}\n", preface, "```", json.dumps(context, indent=1, default=str), "```\n"]
    for name, table in tables.items():
        parts += [f"## {name}\n", markdown_table(table["summary"])]
        parts.append(f"![{name}]({plot_table(out_dir / f'{name}.png', name, table['summary']).name})\n")
        if sweeps and sweeps.get(name):
            png = plot_sweeps(out_dir / f"{name}-sweep.png", name, table["summary"], sweeps[name])
            parts.append(f"![{name} sweep]({png.name})\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(parts))
    return path
