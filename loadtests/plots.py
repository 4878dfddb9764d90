"""PNG plots for the load-test report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_table(path: Path, name: str, summary: dict[str, dict[str, Any]]) -> Path:
    """Left: throughput ratio to baseline per variant (paired, min-max). Right: latency medians."""
    plt = _pyplot()
    variants = list(summary)
    ratios = [summary[v]["ratio_to_baseline"]["output_throughput"] for v in variants]
    errors = [[r["median"] - r["min"] for r in ratios], [r["max"] - r["median"] for r in ratios]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    left.bar(variants, [r["median"] for r in ratios], yerr=errors, capsize=4, color="tab:blue")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_ylabel("output throughput / baseline (paired, min-max)")
    left.tick_params(axis="x", rotation=35)
    for quantile, marker in (("p50", "o"), ("p99", "^")):
        right.plot(variants, [summary[v]["median"][f"{quantile}_ttft_ms"] for v in variants], marker=marker,
                   label=f"TTFT {quantile}")
    right.plot(variants, [summary[v]["median"]["p50_tpot_ms"] for v in variants], marker="s", label="TPOT p50")
    right.set_ylabel("ms (median over repeats)")
    right.set_yscale("log")
    right.tick_params(axis="x", rotation=35)
    right.legend()
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_sweeps(path: Path, name: str, summary: dict[str, dict[str, Any]], sweeps: dict[str, dict]) -> Path:
    """One panel per sweep axis: throughput ratio and TTFT p50 against x, one line per series."""
    plt = _pyplot()
    axes_names = list(dict.fromkeys(s["axis"] for s in sweeps.values()))
    fig, panels = plt.subplots(2, len(axes_names), figsize=(6 * len(axes_names), 7.5), squeeze=False)
    for column, axis in enumerate(axes_names):
        series = {}
        for variant, sweep in sweeps.items():
            if sweep["axis"] == axis:
                series.setdefault(sweep["series"], []).append((sweep["x"], summary[variant]))
        for label, points in series.items():
            points.sort(key=lambda p: p[0])
            xs = [x for x, _ in points]
            panels[0][column].plot(xs, [s["ratio_to_baseline"]["output_throughput"]["median"] for _, s in points],
                                   marker="o", label=label)
            panels[1][column].plot(xs, [s["median"]["p50_ttft_ms"] for _, s in points], marker="o", label=label)
        panels[0][column].axhline(1.0, color="black", linewidth=0.8)
        panels[0][column].set_ylabel("throughput / baseline")
        panels[1][column].set_ylabel("TTFT p50 ms")
        for row in (0, 1):
            panels[row][column].set_xlabel(axis)
            panels[row][column].legend()
    fig.suptitle(f"{name}: sweeps")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
