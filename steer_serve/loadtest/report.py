"""The report: report.json (everything), report.md (what an operator reads), PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from steer_serve.loadtest.plots import plot_latency, plot_sweep

COLUMNS = (("requests", "sent", "{:.0f}"), ("ok", "completed", "{:.0f}"), ("failed", "failed", "{:.0f}"),
           ("TTFT p50", "p50_ttft_ms", "{:.1f}"), ("TTFT p99", "p99_ttft_ms", "{:.1f}"),
           ("TPOT p50", "p50_tpot_ms", "{:.1f}"), ("TPOT p99", "p99_tpot_ms", "{:.1f}"),
           ("ITL p99", "p99_itl_ms", "{:.1f}"), ("E2E p50", "p50_e2el_ms", "{:.0f}"),
           ("E2E p99", "p99_e2el_ms", "{:.0f}"), ("req/s", "request_throughput", "{:.2f}"),
           ("out tok/s", "output_throughput", "{:.1f}"), ("goodput", "goodput_share", "{:.0%}"))


def run_label(run: dict[str, Any]) -> str:
    if run["rate"] is None:
        return f"closed loop, concurrency {run['concurrency']}"
    cap = f", concurrency cap {run['concurrency']}" if run["concurrency"] else ""
    return f"{run['rate']:g} req/s ({run['process']}{cap})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _class_table(run: dict[str, Any]) -> list[str]:
    rows = []
    for name, metrics in [("**all**", run["overall"]), *run["classes"].items()]:
        rows.append([name] + [fmt.format(metrics[key]) for _, key, fmt in COLUMNS])
    return _table(["class"] + [c for c, _, _ in COLUMNS], rows)


def _share_table(run: dict[str, Any]) -> list[str]:
    rows = []
    for name, share in run["shares"]["classes"].items():
        seen = run["headers"][name]
        arms = ", ".join(f"{a}: {n}" for a, n in sorted(seen["arms"].items())) or "-"
        rows.append([name, f"{share['configured']:.1%}", f"{share['requests']} ({share['drawn']:.1%})",
                     f"{seen['fingerprinted']}/{seen['answered']}", str(seen["mismatched"]),
                     str(seen["distinct_fingerprints"]), arms])
    lines = _table(["class", "configured", "drawn", "fingerprint as sent", "other fingerprint",
                    "distinct fingerprints", "arms"], rows)
    return lines + ["", f"Chi-square test of the drawn shares against the configured ones: p = "
                        f"{run['shares']['chi_square_p']:.3f}."]


def _server_lines(run: dict[str, Any]) -> list[str]:
    server = run["server"]
    if server is None:
        return ["The server has no /metrics: nothing to compare."]
    lines = _table(["figure", "client", "server /metrics delta", "equal"],
                   [[c["figure"], f"{c['client']:.0f}", f"{c['server']:.0f}", "yes" if c["equal"] else "**NO**"]
                    for c in run["checks"]])
    peaks = server["peaks"]
    lines += ["", f"vLLM queue time (mean per request): {server['mean_queue_time_ms']:.1f} ms; preemptions: "
                  f"{server['preemptions']:.0f}; peak waiting: {peaks.get('vllm:num_requests_waiting', 0):.0f}, "
                  f"peak running: {peaks.get('vllm:num_requests_running', 0):.0f}, peak KV-cache use: "
                  f"{peaks.get('vllm:kv_cache_usage_perc', 0):.1%}."]
    if "steer_serve_rejections" in server:
        lines.append(f"steer_serve: generated tokens {server['steer_serve_generation_tokens']:.0f}, "
                     f"validation rejections {server['steer_serve_rejections']:.0f}.")
    return lines


def _run_section(run: dict[str, Any]) -> list[str]:
    lines = [f"## {run_label(run)}: {run['requests']} requests in {run['duration_s']:.1f} s", "",
             "Latencies in ms (vLLM's benchmark definitions); goodput = share of requests within every "
             "per-request SLO limit.", "", *_class_table(run), "", "### Traffic classes", "", *_share_table(run)]
    if run["errors"]:
        lines += ["", "### Errors by status", ""]
        lines += _table(["status", "count", "classes", "example"],
                        [[s, str(e["count"]), json.dumps(e["classes"]), e["example"][:120].replace("|", "/")]
                         for s, e in run["errors"].items()])
    lines += ["", "### Server /metrics vs client", "", *_server_lines(run)]
    if run["slo"]:
        lines += ["", "### SLOs", ""]
        lines += _table(["objective", "measured", "met"],
                        [[r["objective"], f"{r['measured']:.3g}", "yes" if r["met"] else "**NO**"] for r in run["slo"]])
    return lines + [""]


def _sweep_section(report: dict[str, Any]) -> list[str]:
    sweep = report["sweep"]
    best = sweep["max_rate_meeting_slo"]
    verdict = f"**{best:g} req/s**" if best is not None else "**none** (the lowest load already misses them)"
    rows = [[f"{r['rate']:g}", f"{r['overall']['request_throughput']:.2f}", f"{r['overall']['p50_ttft_ms']:.1f}",
             f"{r['overall']['p99_ttft_ms']:.1f}", f"{r['overall']['p99_e2el_ms']:.0f}",
             f"{r['overall']['goodput_share']:.0%}",
             f"{r['server']['mean_queue_time_ms']:.1f}" if r["server"] else "-", "yes" if r["slo_met"] else "no"]
            for r in report["runs"]]
    return ["## Sweep", "", f"Highest offered load meeting every SLO (with every lower load meeting them): {verdict}.",
            "", *_table(["offered req/s", "achieved req/s", "TTFT p50", "TTFT p99", "E2E p99", "goodput",
                         "vLLM queue ms", "SLOs met"], rows), "", "![sweep](sweep.png)", ""]


def render_markdown(report: dict[str, Any]) -> str:
    scenario = report["scenario"]
    classes = ", ".join(f"{c['name']} (weight {c['weight']:g})" for c in scenario["traffic"])
    lines = [f"# Load test: {report.get('title') or scenario['model']}", "",
             f"Server {report['url']}, model `{scenario['model']}`; traffic: {classes}; seed {scenario['seed']}.",
             f"SLOs {'met' if report['slo_met'] else '**missed**'}.", ""]
    for key, value in (report.get("context") or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", "![latency](latency.png)", ""]
    if report["sweep"]:
        lines += _sweep_section(report)
    for run in report["runs"]:
        lines += _run_section(run)
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_latency(report, out / "latency.png")
    if report["sweep"]:
        plot_sweep(report, out / "sweep.png")
    path = out / "report.md"
    path.write_text(render_markdown(report))
    return path
