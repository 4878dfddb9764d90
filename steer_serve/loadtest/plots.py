"""PNG plots of a load-test report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "end-to-end latency"))


def plot_latency(report: dict[str, Any], path: Path) -> None:
    """p50/p90/p99 per traffic class of the first run (the lowest load of a sweep)."""
    run = report["runs"][0]
    rate = "closed loop" if run["rate"] is None else f"{run['rate']:g} req/s"
    _percentile_bars({"all": run["overall"], **run["classes"]}, path,
                     f"{report.get('title') or report['scenario']['model']}: latency by traffic class "
                     f"({rate}, {run['requests']} requests)")


def plot_reports(reports: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """All traffic of several reports' first runs side by side (e.g. plain vLLM vs steer-serve)."""
    _percentile_bars({name: report["runs"][0]["overall"] for name, report in reports.items()}, path, title)


def _percentile_bars(groups: dict[str, dict[str, float]], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    width = 0.8 / len(groups)
    for ax, (metric, panel) in zip(axes, PANELS):
        for j, (name, metrics) in enumerate(groups.items()):
            values = [metrics.get(f"p{p}_{metric}_ms", 0.0) for p in (50, 90, 99)]
            ax.bar([i + j * width for i in range(3)], values, width, label=name)
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(3)], ["p50", "p90", "p99"])
        ax.set_title(panel)
        ax.set_ylabel("ms")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(report: dict[str, Any], path: Path) -> None:
    """TTFT, E2E, goodput and vLLM's queue time against offered load, with the SLO limits."""
    runs = report["runs"]
    rates = [r["rate"] for r in runs]
    slo = report["scenario"].get("slo") or {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric, title in ((axes[0], "ttft", "TTFT"), (axes[1], "e2el", "end-to-end latency")):
        for p in (50, 99):
            ax.plot(rates, [r["overall"][f"p{p}_{metric}_ms"] for r in runs], marker="o", label=f"p{p}")
        if slo.get(metric):
            ax.axhline(slo[metric]["max_ms"], color="red", linestyle="--",
                       label=f"SLO p{slo[metric]['percentile']:g}")
        ax.set(title=f"{title} vs offered load", xlabel="offered load (req/s)", ylabel="ms")
        ax.legend(fontsize=8)
    axes[2].plot(rates, [r["overall"]["goodput_share"] for r in runs], marker="o", color="green", label="goodput share")
    axes[2].set(title="goodput and vLLM queue time", xlabel="offered load (req/s)", ylabel="share of requests", ylim=(0, 1.05))
    if all(r["server"] for r in runs):
        twin = axes[2].twinx()
        twin.plot(rates, [r["server"]["mean_queue_time_ms"] for r in runs], marker="s", color="grey",
                  label="vLLM queue time (mean)")
        twin.set_ylabel("ms")
        twin.legend(fontsize=8, loc="center right")
    best = report["sweep"]["max_rate_meeting_slo"]
    if best is not None:
        for ax in axes:
            ax.axvline(best, color="black", linestyle=":", alpha=0.6)
    axes[2].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"{report['scenario']['model']}: sweep (highest load meeting the SLOs: "
                 f"{'none' if best is None else f'{best:g} req/s'})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
