"""Regression gate: each figure of a new report against the same figure of an old one (new/old)."""

from __future__ import annotations

from typing import Any

LOWER_IS_BETTER = tuple(f"p{p}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for p in (50, 90, 99))
HIGHER_IS_BETTER = ("request_throughput", "output_throughput", "goodput_share")


def _runs_by_load(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {("closed" if r["rate"] is None else f"{r['rate']:g} req/s"): r for r in report["runs"]}


def _groups(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {"all": run["overall"], **run["classes"]}


def compare(new: dict[str, Any], old: dict[str, Any], max_regression: float) -> list[dict[str, Any]]:
    """Rows for every figure present in both (same load, same class); `regressed` when a latency
    grew by more than `max_regression` or a throughput/goodput fell by more than it."""
    rows = []
    old_runs = _runs_by_load(old)
    for load, run in _runs_by_load(new).items():
        if load not in old_runs:
            continue
        old_groups = _groups(old_runs[load])
        for group, metrics in _groups(run).items():
            for key in LOWER_IS_BETTER + HIGHER_IS_BETTER:
                before, after = old_groups.get(group, {}).get(key), metrics.get(key)
                if not before or after is None:
                    continue
                ratio = after / before
                worse = ratio > 1 + max_regression if key in LOWER_IS_BETTER else ratio < 1 - max_regression
                rows.append({"load": load, "class": group, "figure": key, "old": before, "new": after,
                             "ratio": ratio, "regressed": worse})
    return rows


def render(rows: list[dict[str, Any]], max_regression: float) -> str:
    lines = [f"# Regression check (new/old; latencies may grow, throughput and goodput fall, by at most "
             f"{max_regression:.0%})", "", "| load | class | figure | old | new | new/old | |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['class']} | {r['figure']} | {r['old']:.3g} | {r['new']:.3g} | "
                     f"{r['ratio']:.3f} | {'**REGRESSED**' if r['regressed'] else 'ok'} |")
    regressed = sum(r["regressed"] for r in rows)
    lines += ["", f"{regressed} of {len(rows)} figures regressed." if rows else
              "No figure in common (different loads or classes)."]
    return "\n".join(lines)
