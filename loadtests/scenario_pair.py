"""`make loadtest`: the standard comparison, one scenario run twice through `steer-serve loadtest`:
on plain vLLM (no plugin loaded), then on steer-serve gated against it with `--baseline`, so each
regression table is the steer-serve/plain ratio of every figure. Steered scenarios with the same
load then run on steer-serve, gated against the same plain-vLLM report (figures in common: `all`
and same-named classes). summary.md collects the ratios.

    .venv/bin/python -m loadtests.scenario_pair --out loadtests/reports/loadtest-default \\
        --pair configs/loadtests/plain-vllm.yaml --steered configs/loadtests/mixed-batch.yaml

Each server runs alone (one after the other) on the default model, compiled as deployed
(`--eager`: both in eager mode, for a short run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from steer_serve.cli import DEFAULT_CPU_KVCACHE_GIB
from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir
from steer_serve.loadtest.plots import plot_reports

ROOT = Path(__file__).resolve().parent.parent
VLLM_ENTRY = "vllm.entrypoints.launchers.api_server.entry"


SUMMARY_FIGURES = ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "p50_e2el_ms", "p99_e2el_ms",
                   "output_throughput")


def server_command(plugin: bool, port: int, experiments: Path, eager: bool) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=DEFAULT_CPU_KVCACHE_GIB,
               VLLM_USE_V2_MODEL_RUNNER="0")  # the model runner steer-serve runs on, for both
    mode = ["--enforce-eager"] if eager else []
    if plugin:
        return [sys.executable, "-m", "steer_serve.cli", "serve", "--port", str(port),
                "--experiments", str(experiments), *mode], env
    env["VLLM_PLUGINS"] = ""  # an allow-list that matches no plugin: plain vLLM
    return [sys.executable, "-m", VLLM_ENTRY, "--model", str(default_model_dir()), "--served-model-name",
            DEFAULT_MODEL_NAME, "--port", str(port), "--host", "127.0.0.1", *mode], env


@contextmanager
def running(plugin: bool, port: int, log: Path, eager: bool) -> Iterator[str]:
    """A server on the default model; steer-serve with a copy of configs/experiments (its store
    writes exposures there, not into the repository)."""
    experiments = Path(tempfile.mkdtemp(prefix="loadtest-experiments-"))
    shutil.copytree(ROOT / "configs" / "experiments", experiments, dirs_exist_ok=True)
    command, env = server_command(plugin, port, experiments, eager)
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, url, log)
            print(f"{'steer-serve' if plugin else 'plain vLLM'} ready after {time.monotonic() - started:.0f} s",
                  flush=True)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)
            shutil.rmtree(experiments, ignore_errors=True)


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError(f"server not ready after {timeout_s:.0f} s; see {log}")


def loadtest(url: str, scenario: Path, out: Path, *extra: str) -> int:
    command = [sys.executable, "-m", "steer_serve.cli", "loadtest", "--url", url, "--scenario", str(scenario),
               "--out", str(out), *extra]
    print("$ " + " ".join(["steer-serve", *command[3:]]), flush=True)
    return subprocess.run(command, cwd=ROOT).returncode


def ratio_rows(out: Path, names: list[str]) -> list[str]:
    """steer-serve/plain of the summary figures for `all` and `unsteered`, from each regression.json."""
    lines = ["| steer-serve run | class | " + " | ".join(SUMMARY_FIGURES) + " |",
             "|---|---|" + "---|" * len(SUMMARY_FIGURES)]
    for name in names:
        path = out / name / "regression.json"
        if not path.exists():
            lines.append(f"| {name} | (no report: see the log) |")
            continue
        ratios = {(r["class"], r["figure"]): r["ratio"] for r in json.loads(path.read_text())}
        for group in ("all", "unsteered"):
            # A class's throughput counts its share of the requests only: a ratio of all traffic alone.
            figures = [f for f in SUMMARY_FIGURES if group == "all" or "throughput" not in f]
            if any((group, f) in ratios for f in figures):
                cells = [f"{ratios[(group, f)]:.2f}" if (group, f) in ratios and f in figures else "-"
                         for f in SUMMARY_FIGURES]
                lines.append(f"| {name} | {group} | " + " | ".join(cells) + " |")
    return lines


def write_summary(out: Path, names: list[str], command: str) -> Path:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    lines = ["# steer-serve vs plain vLLM (same scenario, same machine, same session)", "",
             f"- command: `{command}`", f"- machine: {machine}", "- baseline: plain-vllm/report.json", "",
             "Ratios steer-serve / plain vLLM (latency: below 1 is faster; throughput: above 1 is more).", "",
             *ratio_rows(out, names), "", "![all traffic: plain vLLM and steer-serve](comparison.png)", ""]
    reports = {name: json.loads((out / name / "report.json").read_text())
               for name in ["plain-vllm", *names] if (out / name / "report.json").exists()}
    if reports:
        plot_reports(reports, out / "comparison.png", "All traffic, same scenario and load: plain vLLM vs steer-serve")
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pair", type=Path, required=True, help="scenario run on plain vLLM, then on steer-serve")
    parser.add_argument("--steered", type=Path, nargs="*", default=[],
                        help="scenarios run on steer-serve only, gated against the plain-vLLM report")
    parser.add_argument("--max-regression", default="0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--eager", action="store_true",
                        help="both servers with --enforce-eager (start in about a minute on 2 CPU cores instead of ~3)")
    parser.add_argument("--gate", action="store_true", help="exit 1 on a regression or a missed SLO (default: only on errors)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the server it started
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    baseline = args.out / "plain-vllm" / "report.json"
    with running(False, args.port, logs / "plain-vllm.log", args.eager) as url:
        plain = loadtest(url, args.pair, args.out / "plain-vllm", "--title", "plain vLLM", "--no-progress")
    if plain == 2:
        return 2
    gate = ("--baseline", str(baseline), "--max-regression", args.max_regression, "--no-progress")
    names = ["steer-serve", *(scenario.stem for scenario in args.steered)]
    codes = []
    with running(True, args.port, logs / "steer-serve.log", args.eager) as url:
        codes.append(loadtest(url, args.pair, args.out / "steer-serve", "--title",
                              "steer-serve (baseline: plain vLLM)", *gate))
        for scenario in args.steered:
            codes.append(loadtest(url, scenario, args.out / scenario.stem, "--title",
                                  f"steer-serve, {scenario.stem} (baseline: plain vLLM)", *gate))
    summary = write_summary(args.out, names, " ".join([Path(sys.executable).name, "-m", "loadtests.scenario_pair",
                                                       *sys.argv[1:]]))
    print(summary.read_text())
    worst = max(codes + [plain])
    return worst if worst != 1 or args.gate else 0


if __name__ == "__main__":
    raise SystemExit(main())
