"""Standard comparison: steer-serve vs plain vLLM (plugin not loaded), same machine, same run.

    .venv/bin/python -m loadtests.compare --out loadtests/reports/cpu-default     # full (~30 min on 2 cores)
    .venv/bin/python -m loadtests.compare --quick --out /tmp/smoke               # seconds-scale smoke

Variants are interleaved and repeated; the report gives medians with min-max spread and ratios
against plain vLLM. Every run uses fresh random prompts, so no run profits from another's
prefix cache.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # reuse the test suite's server launcher and tiny models

from loadtests import workloads as wl  # noqa: E402
from loadtests.hf_baseline import hf_throughput  # noqa: E402
from loadtests.report import summarise, write_report  # noqa: E402
from loadtests.vllm_bench import run_benchmark  # noqa: E402
from steer_serve.default_model import default_model_dir  # noqa: E402
from support.servers import Server  # noqa: E402
from support.tiny_models import build_tiny_llama  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    plugin: bool
    steering: wl.SteeringFor


@dataclass(frozen=True)
class Section:
    name: str
    model_dir: Path
    model: wl.ModelSpec
    variants: tuple[Variant, ...]
    concurrency: int
    num_requests: int
    input_len: int
    output_len: int
    extra_args: tuple[str, ...] = ()


def default_model_section(quick: bool) -> Section:
    model = wl.ModelSpec("default", 576, 30)
    distinct = wl.distinct_vectors(model, 32, 10)
    variants = (
        Variant("plain-vllm", False, wl.unsteered),
        Variant("plugin-unsteered", True, wl.unsteered),
        Variant("shared-vector-10L", True, wl.distinct_vectors(model, 1, 10)),
        Variant("distinct-32-10L", True, distinct),
        Variant("mixed-50-50", True, wl.mixed(distinct)),
    )
    return Section("default-model", default_model_dir(), model, variants, 32, 8 if quick else 64, 64,
                   8 if quick else 128)


def overhead_section(quick: bool, tiny_dir: Path) -> Section:
    model = wl.ModelSpec("tiny", 128, 4)
    variants = [Variant("plain-vllm", False, wl.unsteered), Variant("plugin-unsteered", True, wl.unsteered)]
    variants += [Variant(f"distinct-{k}-all-layers", True, wl.distinct_vectors(model, k, 4)) for k in (1, 8, 32, 64)]
    variants += [Variant("distinct-64-1-layer", True, wl.distinct_vectors(model, 64, 1))]
    return Section("overhead-bound-tiny", tiny_dir, model, tuple(variants), 64, 8 if quick else 256, 32,
                   8 if quick else 128, ("--max-num-seqs", "64"))


def run_section(section: Section, repeats: int, log_dir: Path) -> dict:
    servers = {flag: Server(section.model_dir, log_dir, plugin=flag, eager=False, extra_args=list(section.extra_args))
               for flag in (False, True)}
    try:
        for server in servers.values():
            server.wait_ready()
            _run(server, section, wl.unsteered, seed=10_000)  # warm-up
        runs = []
        seeds = itertools.count(1)
        for repeat in range(repeats):
            for variant in section.variants:
                result = _run(servers[variant.plugin], section, variant.steering, next(seeds))
                runs.append({"variant": variant.name, "repeat": repeat, "result": result})
                print(f"[{section.name}] {variant.name} #{repeat}: {result['output_throughput']:.1f} tok/s, "
                      f"TTFT p50 {result['p50_ttft_ms']:.0f} ms, failed {result.get('failed', 0)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    baseline = section.variants[0].name
    return {"runs": runs, "baseline": baseline, "summary": summarise(runs, baseline),
            "setup": {"concurrency": section.concurrency, "requests": section.num_requests,
                      "input_len": section.input_len, "output_len": section.output_len}}


def _run(server: Server, section: Section, steering: wl.SteeringFor, seed: int) -> dict:
    requests = wl.build_requests(steering, section.num_requests, section.input_len, section.output_len, seed=seed)
    return run_benchmark(server.url, server.model, requests, concurrency=section.concurrency)


def hf_section(quick: bool, vllm_distinct: float) -> dict:
    """HF hooks, one batch per distinct vector vs one batch with a shared vector."""
    rng = np.random.default_rng(0)
    layers = list(range(10, 20))
    output_len, distinct_n, shared_n = (8, 2, 4) if quick else (128, 4, 16)
    prompt = lambda: rng.integers(100, 49000, size=64).tolist()  # noqa: E731
    vector = lambda: 0.5 * torch.nn.functional.normalize(torch.randn(576), dim=0)  # noqa: E731
    distinct = hf_throughput(default_model_dir(), [([prompt()], vector()) for _ in range(distinct_n)], layers, output_len)
    shared = hf_throughput(default_model_dir(), [([prompt() for _ in range(shared_n)], vector())], layers, output_len)
    return {"hf_distinct_batch_of_1": distinct, f"hf_shared_batch_of_{shared_n}": shared,
            "steer_serve_distinct_32": vllm_distinct,
            "ratio_steer_serve_to_hf_distinct": vllm_distinct / distinct["output_throughput"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing")
    parser.add_argument("--sections", default="default,overhead,hf")
    args = parser.parse_args()
    wanted = set(args.sections.split(","))
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sections = {}
    if "overhead" in wanted:
        tiny = build_tiny_llama(Path(tempfile.mkdtemp(prefix="tiny-llama-")), default_model_dir())
        sections["overhead-bound-tiny"] = run_section(overhead_section(args.quick, tiny), args.repeats, log_dir)
    if "default" in wanted:
        sections["default-model"] = run_section(default_model_section(args.quick), args.repeats, log_dir)
    hf = None
    if "hf" in wanted and "default-model" in sections:
        distinct = sections["default-model"]["summary"]["distinct-32-10L"]["median"]["output_throughput"]
        hf = hf_section(args.quick, distinct)
    context = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                          f"{platform.processor() or 'cpu'}", "python": platform.python_version(),
               "command": " ".join(sys.argv), "hf_baseline": hf}
    path = write_report(args.out, "steer-serve vs plain vLLM", context, sections)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
