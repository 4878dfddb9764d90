"""Render ExperimentResults for people: markdown, JSON and a PNG (matplotlib, Agg).

The PNG shows units per arm against the configured split, then one panel per comparison
(feedback metrics first, then guardrails): the effect over time with its confidence sequence
as a band. The band only narrows; where it leaves zero the effect is significant at that look
(before the Holm correction, which the tables apply).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from steer_serve.experiments.results import Comparison, ExperimentResults, GuardrailComparison

MAX_PANELS = 12


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def write_report(results: ExperimentResults, out: Path | None) -> str:
    """The markdown; with `out`, also KEY.md, KEY.json and KEY.png in that directory."""
    markdown = render_markdown(results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{results.key}.md").write_text(markdown)
        (out / f"{results.key}.json").write_text(results.model_dump_json(indent=2))
        render_png(results, out / f"{results.key}.png")
    return markdown


def render_markdown(results: ExperimentResults) -> str:
    lines = [f"# Experiment `{results.key}` (version {results.version})", "",
             "| arm | weight | units | requests | errors | killed | p50 latency s | p95 latency s | p95 TTFT s | mean tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in results.arms:
        latency, ttft = arm.latency_s or {}, arm.ttft_s or {}
        name = f"{arm.name} (control)" if arm.control else arm.name
        lines.append(f"| {name} | {arm.weight:g} | {arm.units} | {arm.requests} | {arm.errors} | {arm.killed} | "
                     f"{_fmt(latency.get('p50'))} | {_fmt(latency.get('p95'))} | {_fmt(ttft.get('p95'))} | "
                     f"{_fmt(arm.mean_tokens)} |")
    lines += ["", "## Sample ratio", ""]
    srm = results.sample_ratio
    if srm is None:
        lines.append("Not enough units yet.")
    else:
        verdict = "**MISMATCH: do not trust the comparisons below**" if srm.mismatch else "no mismatch"
        lines.append(f"chi-square {srm.chi2:.3f}, p = {srm.p_value:.4g} ({verdict}; alarm below p = 0.001)")
    level = f"{1 - results.alpha:.0%}"
    lines += ["", f"Method: {results.method}. Intervals are {level} confidence sequences and p-values are "
              "always valid: both may be read at any time, as often as you like.", "",
              "## Feedback metrics (arm minus control)", ""]
    lines += _table(results.metrics, level) if results.metrics else ["No feedback joined yet."]
    lines += ["", "## Guardrails (arm minus control; higher is worse)", ""]
    lines += _table(results.guardrails, level) if results.guardrails else ["No requests yet."]
    lines += ["", f"Feedback records matching no exposure: {results.feedback_unmatched}."]
    return "\n".join(lines) + "\n"


def _table(rows: list[Comparison], level: str) -> list[str]:
    lines = [f"| metric | arm | n | control n | arm mean | control mean | difference | {level} CS | p (always valid) | "
             "p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        verdict = "significant" if row.significant else "-"
        if isinstance(row, GuardrailComparison) and row.degraded:
            verdict = "**DEGRADED**"
        lines.append(f"| {row.metric} | {row.arm} | {row.n} | {row.control_n} | {_fmt(row.mean)} | "
                     f"{_fmt(row.control_mean)} | {_fmt(row.difference)} | [{_fmt(row.ci_low)}, {_fmt(row.ci_high)}] | "
                     f"{_fmt(row.p_value)} | {_fmt(row.p_adjusted)} | {verdict} |")
    return lines


def render_png(results: ExperimentResults, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in [*results.metrics, *results.guardrails] if r.trajectory][:MAX_PANELS]
    columns = 3
    grid = 1 + math.ceil(len(rows) / columns)
    figure = plt.figure(figsize=(5 * columns, 3.4 * grid))
    units = figure.add_subplot(grid, columns, 1)
    names = [arm.name for arm in results.arms]
    units.bar(names, [arm.units for arm in results.arms], color="tab:blue", label="observed units")
    if results.sample_ratio is not None:
        expected = [results.sample_ratio.expected_units.get(name, 0.0) for name in names]
        units.scatter(names, expected, color="black", zorder=3, label="expected from weights")
    units.set_title(f"{results.key} v{results.version}: units per arm")
    units.legend(fontsize=8)
    for index, row in enumerate(rows):
        _effect_panel(figure.add_subplot(grid, columns, columns + index + 1), row, results.alpha)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _effect_panel(axes, row: Comparison, alpha: float) -> None:
    times = [datetime.fromtimestamp(p.ts, tz=timezone.utc) for p in row.trajectory]
    low = [max(p.ci_low, -1e9) for p in row.trajectory]
    high = [min(p.ci_high, 1e9) for p in row.trajectory]
    flagged = isinstance(row, GuardrailComparison) and row.degraded
    color = "tab:red" if flagged else ("tab:green" if row.significant else "tab:gray")
    axes.fill_between(times, low, high, color=color, alpha=0.25, label=f"{1 - alpha:.0%} confidence sequence")
    axes.plot(times, [p.difference for p in row.trajectory], color=color, marker=".", label="difference")
    axes.axhline(0, color="black", linewidth=0.8)
    kind = "guardrail" if isinstance(row, GuardrailComparison) else "metric"
    note = " DEGRADED" if flagged else (" significant" if row.significant else "")
    axes.set_title(f"{kind} {row.metric}: {row.arm} - control{note}", fontsize=9)
    axes.tick_params(axis="x", labelsize=7, rotation=30)
    axes.legend(fontsize=7, loc="upper right")
