"""Standard comparison: steer-serve vs plain vLLM (plugin not loaded), same machine, same run.

    .venv/bin/python -m loadtests.compare --out loadtests/reports/cpu-default     # full (~25 min on 2 cores)
    .venv/bin/python -m loadtests.compare --quick --out /tmp/smoke               # seconds-scale smoke
    .venv/bin/python -m loadtests.compare --sections observe --out loadtests/reports/observe-cost  # probes, capture
    .venv/bin/python -m loadtests.compare --sections default --tables default-model --repeats 2 \
        --variants plugin-unsteered,distinct-32-10L,mixed-50-50 --out DIR    # plain vs unsteered vs steered, ~9 min
    .venv/bin/python -m loadtests.compare --sections sae --out loadtests/reports/sae-clamp-cost   # 8 SAE clamps

Variants are interleaved and repeated; the report gives medians with min-max spread and ratios
against plain vLLM. Every run uses fresh random prompts, so no run profits from another's
prefix cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch


from loadtests import workloads as wl
from loadtests.git_commit import current_commit
from loadtests.hf_baseline import hf_throughput
from loadtests.plan import (Section, Table, Variant, default_model_section, moe_section, observe_section,
                            overhead_section, sae_clamp_section)
from loadtests.report import summarise, write_report
from loadtests.vllm_bench import run_benchmark
from steer_serve.default_model import default_model_dir
from harness.servers import Server
from harness.tiny_models import build_tiny_llama, build_tiny_model

# KV cache of both servers: 1 GiB, so 32 concurrent requests of 64 + 64 tokens never queue for cache
# (the test suite's 64 MiB default would hold ~1,400 SmolLM2 tokens and cap concurrency near 11)
BENCH_KV_CACHE_BYTES = 2**30


def run_section(section: Section, repeats: int, log_dir: Path, eager: bool = False) -> dict[str, dict]:
    """Both servers up, warmed; every table's variants interleaved, order reversed on odd repeats."""
    servers = {flag: Server(section.model_dir, log_dir, plugin=flag, eager=eager, kv_cache_bytes=BENCH_KV_CACHE_BYTES,
                            extra_args=list(section.server_args) + (list(section.plugin_args) if flag else []))
               for flag in (False, True)}
    try:
        for server in servers.values():
            server.wait_ready()
            warm_up = wl.build_requests(wl.unsteered, 16, 32, 16, vocab=section.vocab, seed=10_000)
            run_benchmark(server.url, server.model, warm_up, concurrency=8)  # compile, caches, allocator
        for table in section.tables:
            for variant in table.variants:
                check_observation(servers[variant.plugin], variant)
        seeds = itertools.count(1)
        runs: dict[str, list[dict]] = {table.name: [] for table in section.tables}
        for repeat in range(repeats):
            for table in section.tables:
                order = table.variants if repeat % 2 == 0 else tuple(reversed(table.variants))
                for variant in order:
                    result = _run(servers[variant.plugin], section, table, variant, next(seeds))
                    runs[table.name].append({"variant": variant.name, "repeat": repeat, "result": result})
                    with open(log_dir / "runs.jsonl", "a") as partial:  # survives a run cut by its time limit
                        partial.write(json.dumps({"table": table.name, **runs[table.name][-1]}) + "\n")
                    print(f"[{table.name}] {variant.name} #{repeat}: {result['output_throughput']:.1f} tok/s, "
                          f"TTFT p50 {result['p50_ttft_ms']:.0f} ms, failed {result.get('failed', 0)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {table.name: _table_result(table, runs[table.name]) for table in section.tables}


def check_observation(server: Server, variant: Variant) -> None:
    """The benchmark client ignores the observation chunk; one plain request per observing variant
    shows that the server answers its `observe` with values, not an error."""
    observe = variant.observe(0)
    if observe is None:
        return
    body = {"model": server.model, "prompt": [100, 200, 300, 400], "max_tokens": 4, "temperature": 0.0,
            "observe": observe}
    response = server.client.post("/v1/completions", json=body)
    observed = response.json().get("steer_serve", {}).get("observe", {}) if response.status_code == 200 else {}
    if not (observed.get("probes") or observed.get("capture")):
        raise RuntimeError(f"{variant.name}: no observation in the answer ({response.status_code}): {response.text[:500]}")


def _table_result(table: Table, runs: list[dict]) -> dict:
    baselines = {v.name: table.baseline_of(v) for v in table.variants}
    return {"runs": runs, "summary": summarise(runs, baselines),
            "setup": {"concurrency": table.concurrency, "requests": table.num_requests,
                      "input_len": table.input_len, "output_len": table.output_len},
            "sweeps": {v.name: asdict(v.sweep) for v in table.variants if v.sweep}}


def _run(server: Server, section: Section, table: Table, variant: Variant, seed: int) -> dict:
    requests = wl.build_requests(variant.steering, table.num_requests, table.input_len, table.output_len,
                                 vocab=section.vocab, users=variant.users, seed=seed, observe_for=variant.observe)
    return run_benchmark(server.url, server.model, requests, concurrency=table.concurrency, rate=variant.rate)


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


AB_EXPERIMENT = """key: loadtest_ab
salt: loadtest-ab
status: running
version: 1
coverage: 1.0
unit: user
arms:
  - {name: control, weight: 1, control: true}
  - name: gloomy
    weight: 1
    interventions: [{type: add, vector: gloomy, scale: 0.4}]
"""


def experiments_args(out: Path) -> tuple[str, ...]:
    """steer-serve runs one live experiment (50/50 control vs the shipped `gloomy` vector)."""
    directory = out / "experiments"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "loadtest_ab.yaml").write_text(AB_EXPERIMENT)
    return ("--experiments", str(directory), "--experiments-db", f"sqlite:///{(out / 'logs' / 'experiments.db').resolve()}")


def keep_variants(table: Table, names: set[str]) -> Table:
    """The table with only the named variants and the baselines they are compared with."""
    wanted = {v.name for v in table.variants if v.name in names}
    wanted |= {table.baseline_of(v) for v in table.variants if v.name in wanted}
    return replace(table, variants=tuple(v for v in table.variants if v.name in wanted))


BENCH_SAE = "smollm2_l10_bench_standard"


def bench_sae_args(out: Path) -> tuple[str, ...]:
    """An SAE library holding the shipped SAE's weights as a standard (ReLU) SAE: clamps need a
    standard or jumprelu SAE, and a clamp's engine cost depends only on the shapes (8 encoder and 8
    decoder rows of D reach the engine), not on how the weights were trained."""
    from steer_serve.library.sae_formats import read_saelens, write_saelens
    from steer_serve.settings import REPO_CONFIGS

    shipped = REPO_CONFIGS / "saes" / "smollm2_l10_topk"
    sae = read_saelens(shipped.with_suffix(".json").read_bytes(), shipped.with_suffix(".safetensors").read_bytes())
    directory = out / "logs" / "saes"  # not committed (11 MB): the command rebuilds it
    directory.mkdir(parents=True, exist_ok=True)
    cfg, weights = write_saelens(replace(sae, architecture="standard", k=None))
    (directory / f"{BENCH_SAE}.json").write_bytes(cfg)
    (directory / f"{BENCH_SAE}.safetensors").write_bytes(weights)
    return ("--sae-dir", str(directory.resolve()))


def machine() -> dict[str, str]:
    import vllm

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cores": str(len(os.sched_getaffinity(0))),
            "memory_gib": f"{memory_kb / 2**20:.1f}", "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "vllm": vllm.__version__,
            "commit": current_commit()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing")
    parser.add_argument("--sections", default="overhead,moe,default,hf",
                        help="comma list of overhead,moe,default,hf,observe,sae (observe, sae: not in the default run)")
    parser.add_argument("--eager", action="store_true", help="both servers --enforce-eager (default: compiled)")
    parser.add_argument("--tables", default=None,
                        help="comma list of table names to run (e.g. default-model); default: every table")
    parser.add_argument("--variants", default=None,
                        help="comma list of variant names to keep (each table's baseline stays); default: every one")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: `finally` stops the servers
    wanted = set(args.sections.split(","))
    log_dir = args.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    if "overhead" in wanted:
        sections.append(overhead_section(build_tiny_llama(Path(tempfile.mkdtemp(prefix="tiny-llama-")),
                                                          default_model_dir()), args.quick))
    if "moe" in wanted:
        sections.append(moe_section(build_tiny_model("mixtral", Path(tempfile.mkdtemp(prefix="tiny-moe-")),
                                                     default_model_dir()), args.quick))
    if "default" in wanted:
        sections.append(default_model_section(default_model_dir(), args.quick, experiments_args(args.out)))
    if "observe" in wanted:
        sections.append(observe_section(default_model_dir(), args.quick))
    if "sae" in wanted:
        sections.append(sae_clamp_section(default_model_dir(), args.quick, bench_sae_args(args.out), BENCH_SAE))
    if args.tables:
        keep = set(args.tables.split(","))
        sections = [replace(sec, tables=tuple(t for t in sec.tables if t.name in keep)) for sec in sections]
        sections = [sec for sec in sections if sec.tables]
    if args.variants:
        sections = [replace(sec, tables=tuple(keep_variants(t, set(args.variants.split(","))) for t in sec.tables))
                    for sec in sections]
    tables: dict[str, dict] = {}
    for section in sections:
        tables.update(run_section(section, args.repeats, log_dir, args.eager))
    hf = None
    if "hf" in wanted and "default-model" in tables:
        distinct = tables["default-model"]["summary"]["distinct-32-10L"]["median"]["output_throughput"]
        hf = hf_section(args.quick, distinct)
    context = {"machine": machine(), "command": " ".join([Path(sys.executable).name, "-m", "loadtests.compare",
                                                            *sys.argv[1:]]),
               "repeats": args.repeats, "eager": args.eager, "hf_baseline": hf,
               "setups": {name: table["setup"] for name, table in tables.items()}}
    path = write_report(args.out, "steer-serve vs plain vLLM", context, tables,
                        sweeps={name: table["sweeps"] for name, table in tables.items()})
    print(f"report: {path}")


if __name__ == "__main__":
    main()
