"""Render ExperimentResults for people: a markdown report and a PNG plot (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from steer_serve.experiments.results import ExperimentResults


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def render_markdown(results: ExperimentResults) -> str:
    lines = [f"# Experiment `{results.key}` (version {results.version})", "",
             "| arm | weight | units | requests | errors | killed | p50 latency s | p90 latency s | p50 TTFT s | mean tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm in results.arms:
        latency, ttft = arm.latency_s or {}, arm.ttft_s or {}
        name = f"{arm.name} (control)" if arm.control else arm.name
        lines.append(f"| {name} | {arm.weight:g} | {arm.units} | {arm.requests} | {arm.errors} | {arm.killed} | "
                     f"{_fmt(latency.get('p50'))} | {_fmt(latency.get('p90'))} | {_fmt(ttft.get('p50'))} | "
                     f"{_fmt(arm.mean_tokens)} |")
    lines += ["", "## Sample ratio", ""]
    srm = results.sample_ratio
    if srm is None:
        lines.append("Not enough units yet.")
    else:
        verdict = "**MISMATCH: do not trust the comparisons below**" if srm.mismatch else "no mismatch"
        lines.append(f"chi-square {srm.chi2:.3f}, p = {srm.p_value:.4g} ({verdict}; alarm below p = 0.001)")
    lines += ["", "## Feedback metrics (arm minus control, 95% CI)", ""]
    if not results.metrics:
        lines.append("No feedback joined yet.")
    else:
        lines += ["| metric | test | arm | n | control n | arm mean | control mean | difference | 95% CI | p-value |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in results.metrics:
            test = "two-proportion z" if row.kind == "binary" else "Welch t"
            lines.append(f"| {row.metric} | {test} | {row.arm} | {row.n} | {row.control_n} | {_fmt(row.mean)} | "
                         f"{_fmt(row.control_mean)} | {_fmt(row.difference)} | "
                         f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}] | {_fmt(row.p_value)} |")
    lines += ["", f"Feedback records matching no exposure: {results.feedback_unmatched}."]
    return "\n".join(lines) + "\n"


def render_png(results: ExperimentResults, path: Path) -> Path:
    """Left: units per arm against the configured split. Right: each metric's difference with its CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [arm.name for arm in results.arms]
    left.bar(names, [arm.units for arm in results.arms], color="tab:blue", label="observed units")
    if results.sample_ratio is not None:
        expected = [results.sample_ratio.expected_units.get(name, 0.0) for name in names]
        left.scatter(names, expected, color="black", zorder=3, label="expected from weights")
    left.set_title(f"{results.key} v{results.version}: units per arm")
    left.legend()
    rows = [row for row in results.metrics if row.difference is not None]
    labels = [f"{row.metric}\n{row.arm}" for row in rows]
    for index, row in enumerate(rows):
        right.errorbar([row.difference], [index], xerr=[[row.difference - row.ci_low], [row.ci_high - row.difference]],
                       fmt="o", color="tab:red", capsize=4)
    right.axvline(0, color="grey", linewidth=1)
    right.set_yticks(range(len(rows)), labels)
    right.set_title("difference vs control (95% CI)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
