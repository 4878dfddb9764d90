"""Time to healthy, cold and warm: steer-serve vs plain vLLM on the same cache state.

Each variant gets its own fresh `VLLM_CACHE_ROOT` (torch.compile caches: AOT artifacts and the
inductor cache). The first start on it is cold; the following ones are warm (same directory,
same key). Starts alternate between the variants, order reversed on every other round. Default
model, compiled (vLLM's default), the test suite's server flags. Not a timed test: a benchmark.

    flock /tmp/steer-serve-cpu.lock .venv/bin/python -m loadtests.restart_time --warm 2 \
        --out loadtests/reports/restart
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from harness.servers import Server
from loadtests.compare import machine
from steer_serve.default_model import default_model_dir

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {"plain": False, "steer-serve": True}
AOT_DIR = re.compile(r"torch_aot_compile/([0-9a-f]{16,})")
RECOMPILED = "Compiling model again due to a load failure"
LOADED = "Directly load AOT compilation from path"


def start_once(variant: str, cache_root: Path, log_dir: Path) -> dict:
    began = time.monotonic()
    server = Server(default_model_dir(), log_dir, plugin=VARIANTS[variant], eager=False,
                    env={"VLLM_CACHE_ROOT": str(cache_root)})
    try:
        server.wait_ready()
        seconds = time.monotonic() - began
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    keys = sorted(set(AOT_DIR.findall(log)))
    return {"variant": variant, "seconds": round(seconds, 1), "aot_keys": keys,
            "aot_loaded": LOADED in log, "aot_load_failed": RECOMPILED in log, "log": server.log_path.name}


def run(warm: int, work: Path) -> list[dict]:
    roots = {variant: work / variant for variant in VARIANTS}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
    results = []
    for round_ in range(1 + warm):
        order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
        for variant in order:
            result = start_once(variant, roots[variant], work) | {"phase": "cold" if round_ == 0 else "warm"}
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def summary(results: list[dict]) -> dict[str, dict[str, float]]:
    """Median seconds per phase and variant, and their ratio; a phase missing a variant has no ratio."""
    table: dict[str, dict[str, float]] = {}
    for phase in ("cold", "warm"):
        seconds = {v: [r["seconds"] for r in results if r["variant"] == v and r["phase"] == phase] for v in VARIANTS}
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
             "| phase | plain vLLM (median s) | steer-serve (median s) | steer-serve / plain |", "|---|---|---|---|"]
    for phase, row in table.items():
        lines.append(f"| {phase} | {_cell(row, 'plain', 1)} | {_cell(row, 'steer-serve', 1)} | {_cell(row, 'ratio', 3)} |")
    lines += ["", "| start | phase | variant | seconds | AOT cache key | AOT cache loaded | AOT load failed, recompiled |",
              "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results):
        lines.append(f"| {i + 1} | {r['phase']} | {r['variant']} | {r['seconds']} | "
                     f"{', '.join(k[:12] for k in r['aot_keys']) or '-'} | {r['aot_loaded']} | {r['aot_load_failed']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=int, default=2, help="warm starts per variant after the cold one")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "reports" / "restart")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="restart-time-"))
    results = run(args.warm, work)
    table = summary(results)
    context = machine() | {"starts": str(len(results))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"context": context, "summary": table, "starts": results},
                                                      indent=2))
    (args.out / "report.md").write_text(markdown(results, table, context))
    print(markdown(results, table, context))


if __name__ == "__main__":
    main()
