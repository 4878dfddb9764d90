"""A scenario run twice through `steer-serve loadtest`: plain vLLM (no plugin loaded), then
steer-serve gated against it with `--baseline`, so the regression table is the steer-serve/plain
ratio of every figure. Further scenarios (steered traffic) then run against steer-serve alone.

    .venv/bin/python -m loadtests.scenario_pair --out loadtests/reports/loadtest-example \\
        --pair configs/loadtests/plain-vllm.yaml --steered configs/loadtests/rate-sweep.yaml

Each server runs alone (one after the other) on the default model, compiled as deployed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from steer_serve.cli import DEFAULT_CPU_KVCACHE_GIB
from steer_serve.default_model import DEFAULT_MODEL_NAME, default_model_dir

ROOT = Path(__file__).resolve().parent.parent
VLLM_ENTRY = "vllm.entrypoints.launchers.api_server.entry"


def server_command(plugin: bool, port: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE=DEFAULT_CPU_KVCACHE_GIB)
    if plugin:
        return [sys.executable, "-m", "steer_serve.cli", "serve", "--port", str(port),
                "--experiments", str(ROOT / "configs" / "experiments")], env
    env["VLLM_PLUGINS"] = ""  # an allow-list that matches no plugin: plain vLLM
    return [sys.executable, "-m", VLLM_ENTRY, "--model", str(default_model_dir()), "--served-model-name",
            DEFAULT_MODEL_NAME, "--port", str(port), "--host", "127.0.0.1"], env


@contextmanager
def running(plugin: bool, port: int, log: Path) -> Iterator[str]:
    command, env = server_command(plugin, port)
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, log)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 900) -> None:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pair", type=Path, required=True, help="scenario run on plain vLLM, then on steer-serve")
    parser.add_argument("--steered", type=Path, nargs="*", default=[], help="scenarios run on steer-serve only")
    parser.add_argument("--max-regression", default="0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--gate", action="store_true", help="exit 1 on a regression or a missed SLO (default: only on errors)")
    args = parser.parse_args()
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with running(False, args.port, logs / "plain-vllm.log") as url:
        loadtest(url, args.pair, args.out / "plain-vllm", "--title", "plain vLLM", "--no-progress")
    codes = []
    with running(True, args.port, logs / "steer-serve.log") as url:
        codes.append(loadtest(url, args.pair, args.out / "steer-serve", "--title", "steer-serve (baseline: plain vLLM)",
                              "--baseline", str(args.out / "plain-vllm" / "report.json"),
                              "--max-regression", args.max_regression, "--no-progress"))
        for scenario in args.steered:
            codes.append(loadtest(url, scenario, args.out / scenario.stem, "--no-progress"))
    worst = max(codes)
    return worst if worst != 1 or args.gate else 0


if __name__ == "__main__":
    raise SystemExit(main())
