"""Time to healthy, cold and warm: steer-serve vs plain vLLM on the same cache state.

Each variant gets its own fresh `VLLM_CACHE_ROOT` (torch.compile caches: AOT artifacts and the
inductor cache) under `--work`. The first start on it is cold; the following ones are warm (same
directory, same key). Starts alternate between the variants (plain, steer-serve, then reversed on
every other round). Default model, compiled (vLLM's default), the test suite's server flags. Not a
timed test: a benchmark.

One start takes ~3 min on the shared 2-core machine, so a run is split over several lock holds:
every invocation continues the schedule recorded in `--work`/starts.jsonl and begins no start that
would not finish within `--budget-s` (the hold's limit), then rewrites the report from all starts.

    flock /tmp/steer-serve-cpu.lock timeout 720 .venv/bin/python -m loadtests.restart_time \
        --work /tmp/restart-time --warm 2 --budget-s 690 --out loadtests/reports/restart
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.servers import SMOLLM2_KV_CACHE_BYTES, Server
from loadtests.compare import machine
from steer_serve.default_model import default_model_dir

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {"plain": False, "steer-serve": True}
AOT_DIR = re.compile(r"torch_aot_compile/([0-9a-f]{16,})")
RECOMPILED = "Compiling model again due to a load failure"
LOADED = "Directly load AOT compilation from path"
STAMP = re.compile(r"^\((\w[\w-]*) pid=\d+\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d) ")
# Milestones of a start in vLLM's (and our) log, in order; the first line matching each is taken.
MILESTONES = {
    "api_up": "non-default args:",
    "engine_core_up": "Initializing a V1 LLM engine",
    "worker_up": "Starting to load model",
    "weights_loaded": "Loading weights took",
    "compile_begins": "Warming up model for the compilation",
    "compile_ends": "saved AOT compiled function",
    "warmup_done": "Warming up done.",
    "engine_ready": "init engine (profile, create kv cache, warmup model) took",
    "http_listening": "Starting vLLM server on",
}
PHASES = {  # phase name: (from milestone, to milestone)
    "python + vLLM imports + arg parsing": ("start", "api_up"),
    "config, engine core process": ("api_up", "engine_core_up"),
    "worker process, distributed init": ("engine_core_up", "worker_up"),
    "load weights (+ our hook install)": ("worker_up", "compile_begins"),
    "torch.compile (dynamo trace, AOT save)": ("compile_begins", "compile_ends"),
    "profile run, KV cache, warm-up": ("compile_ends", "engine_ready"),
    "API: endpoint plugins, routes": ("engine_ready", "http_listening"),
    "first healthy /health": ("http_listening", "healthy"),
}


def milestones(log: str, began: float, healthy: float) -> dict[str, float]:
    """Seconds after the start command for each milestone found (log stamps have 1-s resolution)."""
    year = datetime.fromtimestamp(began, timezone.utc).year
    found = {"start": 0.0, "healthy": round(healthy - began, 1)}
    for line in log.splitlines():
        stamp = STAMP.match(line)
        if not stamp:
            continue
        for name, text in MILESTONES.items():
            if name not in found and text in line:
                at = datetime.strptime(f"{year}-{stamp.group(2)}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
                found[name] = round(at.timestamp() - began, 1)
    return found


def phases(marks: dict[str, float]) -> dict[str, float]:
    return {name: round(marks[b] - marks[a], 1) for name, (a, b) in PHASES.items() if a in marks and b in marks}


def start_once(variant: str, cache_root: Path, log_dir: Path) -> dict:
    began = time.time()
    server = Server(default_model_dir(), log_dir, plugin=VARIANTS[variant], eager=False,
                    env={"VLLM_CACHE_ROOT": str(cache_root)}, kv_cache_bytes=SMOLLM2_KV_CACHE_BYTES)
    try:
        server.wait_ready()
        healthy = time.time()
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    marks = milestones(log, began, healthy)
    return {"variant": variant, "seconds": round(healthy - began, 1), "phases": phases(marks),
            "aot_keys": sorted(set(AOT_DIR.findall(log))), "aot_loaded": LOADED in log,
            "aot_load_failed": RECOMPILED in log, "log": server.log_path.name,
            "at": datetime.fromtimestamp(began, timezone.utc).isoformat(timespec="seconds")}


def schedule(warm: int) -> list[tuple[str, str]]:
    """(phase, variant) for every start: a cold round, then `warm` rounds, order reversed on odd rounds."""
    plan = []
    for round_ in range(1 + warm):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        plan += [("cold" if round_ == 0 else "warm", variant) for variant in order]
    return plan


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def estimate(results: list[dict], phase: str, variant: str) -> float:
    """Seconds the next start may take: 1.2 x the longest like it so far; a first warm start, its
    variant's cold start (warm ones recompile too: see the report); a first cold start, 1.5 x the
    longest start so far (a cold steer-serve compile took up to 2x plain's on this machine)."""
    like = [r["seconds"] for r in results if r["variant"] == variant and r["phase"] == phase]
    cold = [r["seconds"] for r in results if r["variant"] == variant and r["phase"] == "cold"]
    if like:
        return 1.2 * max(like) + 20
    if cold:
        return max(cold) + 20
    return 1.5 * max((r["seconds"] for r in results), default=300.0) + 20


def run(warm: int, work: Path, budget_s: float) -> list[dict]:
    """Continue the schedule; start nothing that may not finish within the budget."""
    record = work / "starts.jsonl"
    results = load(record)
    began = time.monotonic()
    for phase, variant in schedule(warm)[len(results):]:
        if time.monotonic() - began + estimate(results, phase, variant) > budget_s:
            print(f"stopping: next start may not finish within the {budget_s:.0f}-s budget", flush=True)
            break
        result = start_once(variant, work / variant, work) | {"phase": phase}
        print(json.dumps(result), flush=True)
        with record.open("a") as f:
            f.write(json.dumps(result) + "\n")
        results.append(result)
    return results


def cache_states(results: list[dict]) -> list[str]:
    """What each start found: "warm" when an earlier start of its variant wrote the same AOT key,
    else "cold" (a changed launch environment changes vLLM's config hash, hence the key)."""
    seen: dict[str, set[tuple[str, ...]]] = {v: set() for v in VARIANTS}
    states = []
    for r in results:
        key = tuple(r["aot_keys"])
        states.append("warm" if key in seen[r["variant"]] else "cold")
        seen[r["variant"]].add(key)
    return states


def summary(results: list[dict]) -> dict[str, dict[str, float]]:
    """Median seconds per cache state and variant, and their ratio; a state missing a variant has no ratio."""
    table: dict[str, dict[str, float]] = {}
    states = cache_states(results)
    for phase in ("cold", "warm"):
        seconds = {v: [r["seconds"] for r, state in zip(results, states) if r["variant"] == v and state == phase]
                   for v in VARIANTS}
        medians = {v: statistics.median(s) for v, s in seconds.items() if s}
        if len(medians) == len(VARIANTS):
            medians["ratio"] = round(medians["steer-serve"] / medians["plain"], 3)
        table[phase] = medians
    return table


def _cell(row: dict[str, float], key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "not measured"


def markdown(results: list[dict], table: dict, context: dict) -> str:
    lines = ["# Time to healthy: steer-serve vs plain vLLM (default model, compiled)", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in context.items()), "",
             "| cache found | plain vLLM (median s) | steer-serve (median s) | steer-serve / plain |",
             "|---|---|---|---|"]
    for phase, row in table.items():
        lines.append(f"| {phase} | {_cell(row, 'plain', 1)} | {_cell(row, 'steer-serve', 1)} | "
                     f"{_cell(row, 'ratio', 3)} |")
    lines += ["", "| start | at (UTC) | scheduled as | cache found | variant | seconds | AOT cache key "
              "| AOT cache loaded | AOT load failed, recompiled |", "|---|---|---|---|---|---|---|---|---|"]
    for i, (r, state) in enumerate(zip(results, cache_states(results))):
        lines.append(f"| {i + 1} | {r.get('at', '-')} | {r['phase']} | {state} | {r['variant']} | {r['seconds']} | "
                     f"{', '.join(k[:12] for k in r['aot_keys']) or '-'} | {r['aot_loaded']} | "
                     f"{r['aot_load_failed']} |")
    lines += ["", "Where the time goes (seconds per start, from vLLM's log stamps, 1-s resolution):", "",
              "| step | " + " | ".join(f"{i + 1} {state} {r['variant']}"
                                       for i, (r, state) in enumerate(zip(results, cache_states(results)))) + " |",
              "|---|" + "---|" * len(results)]
    for name in PHASES:
        lines.append(f"| {name} | " + " | ".join(str(r.get("phases", {}).get(name, "-")) for r in results) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=int, default=2, help="warm starts per variant after the cold one")
    parser.add_argument("--work", type=Path, default=Path("/tmp/restart-time"),
                        help="cache roots, server logs and the starts so far; delete it for a fresh run")
    parser.add_argument("--budget-s", type=float, default=690, help="begin no start that may end after this")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "reports" / "restart")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` unwinds: `finally` stops the server
    args.work.mkdir(parents=True, exist_ok=True)
    results = run(args.warm, args.work, args.budget_s)
    table = summary(results)
    context = machine() | {"starts": str(len(results))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"context": context, "summary": table, "starts": results},
                                                      indent=2))
    (args.out / "report.md").write_text(markdown(results, table, context))
    print(markdown(results, table, context))


if __name__ == "__main__":
    main()
