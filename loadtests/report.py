"""Summaries (median and spread over interleaved repeats), markdown tables and PNG plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

METRIC_COLUMNS = (
    ("output_throughput", "tok/s"),
    ("p50_ttft_ms", "TTFT p50 ms"),
    ("p99_ttft_ms", "TTFT p99 ms"),
    ("p50_tpot_ms", "TPOT p50 ms"),
    ("p50_e2el_ms", "E2E p50 ms"),
)


def summarise(runs: list[dict[str, Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per variant: median, min, max of each metric, and median ratios to `baseline`."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run["result"])
    base = _medians(by_variant[baseline])
    summary = {}
    for variant, results in by_variant.items():
        medians = _medians(results)
        summary[variant] = {
            "repeats": len(results),
            "median": medians,
            "min": {k: min(r[k] for r in results) for k, _ in METRIC_COLUMNS},
            "max": {k: max(r[k] for r in results) for k, _ in METRIC_COLUMNS},
            "ratio_to_baseline": {k: medians[k] / base[k] if base[k] else None for k, _ in METRIC_COLUMNS},
            "failed": sum(r.get("failed", 0) for r in results),
        }
    return summary


def _medians(results: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key, _ in METRIC_COLUMNS}


def markdown_table(summary: dict[str, dict[str, Any]], baseline: str) -> str:
    header = "| variant | runs | " + " | ".join(label for _, label in METRIC_COLUMNS) + f" | tok/s vs {baseline} | TTFT p50 vs {baseline} |"
    lines = [header, "|" + "---|" * (len(METRIC_COLUMNS) + 4)]
    for variant, s in summary.items():
        cells = [f"{s['median'][k]:.1f} ({s['min'][k]:.1f}-{s['max'][k]:.1f})" for k, _ in METRIC_COLUMNS]
        ratios = s["ratio_to_baseline"]
        lines.append(
            f"| {variant} | {s['repeats']} | " + " | ".join(cells)
            + f" | {ratios['output_throughput']:.3f} | {ratios['p50_ttft_ms']:.3f} |"
        )
    return "\n".join(lines) + "\n\nCells: median over interleaved repeats (min-max).\n"


def write_report(out_dir: Path, title: str, context: dict[str, Any], sections: dict[str, dict]) -> Path:
    """sections: name -> {"runs": [...], "baseline": variant, "summary": {...}}; writes JSON, md, PNGs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps({"context": context, "sections": sections}, indent=1))
    parts = [f"# {title}\n", "```", json.dumps(context, indent=1), "```\n"]
    for name, section in sections.items():
        parts += [f"## {name}\n", markdown_table(section["summary"], section["baseline"])]
        png = _plot(out_dir / f"{name}.png", name, section["summary"], section["baseline"])
        parts.append(f"![{name}]({png.name})\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(parts))
    return path


def _plot(path: Path, name: str, summary: dict[str, dict[str, Any]], baseline: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ratios = [summary[v]["ratio_to_baseline"]["output_throughput"] for v in variants]
    errors = [[r - summary[v]["min"]["output_throughput"] / summary[baseline]["median"]["output_throughput"]
               for v, r in zip(variants, ratios)],
              [summary[v]["max"]["output_throughput"] / summary[baseline]["median"]["output_throughput"] - r
               for v, r in zip(variants, ratios)]]
    left.bar(variants, ratios, yerr=errors, capsize=4, color="tab:blue")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_ylabel(f"output throughput / {baseline} (median, min-max)")
    left.tick_params(axis="x", rotation=30)
    for quantile, marker in (("p50", "o"), ("p99", "^")):
        right.plot(variants, [summary[v]["median"][f"{quantile}_ttft_ms"] for v in variants], marker=marker,
                   label=f"TTFT {quantile}")
    right.plot(variants, [summary[v]["median"]["p50_e2el_ms"] / 10 for v in variants], marker="s",
               label="E2E p50 / 10")
    right.set_ylabel("ms (median over repeats)")
    right.tick_params(axis="x", rotation=30)
    right.legend()
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
