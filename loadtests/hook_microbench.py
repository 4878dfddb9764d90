"""Hook microbenchmark: what steer-serve's decoder hooks cost inside a compiled stack, torch only.

A stack of decoder-like layers with vLLM's Llama layer structure (fused add + RMSNorm, a stand-in
attention block of two projections whose output projection carries our per-head hook, add +
RMSNorm, SiLU-gated MLP; each layer returns (hidden, residual)) runs one decode step of B tokens.
Our real hooks (`install_hooks`, the real `SteeringRuntime`, tables and slot loading) are installed
on a second stack that shares the same weights, exactly as a compiled worker installs them on vLLM's
model (one opaque custom op per site, engine/opaque_sites.py); both stacks are torch.compile'd (CUDA graphs, mode "reduce-overhead", on a GPU). Per batch
size it times, interleaved and repeated:

- plain: the stack without hooks (plain vLLM's model);
- hooked, K = 0: hooks installed, nobody steers (every token on the identity row);
- hooked, K = 32 / 256: each token belongs to one of min(K, B) distinct configurations, each adding
  its own vector on 10 layers (of 30 or 32; scaled to the layer count when a CPU run uses fewer);
- floor: one gather + add per steered layer from a [P, D] pool, alone: what any per-token steering
  must at least do.

Ratios are plain time / hooked time (1.0 = free; the issue's targets are idle >= 0.995 and
K = 256 >= 0.97). Attention itself (softmax over the KV cache) is not in the stack, so the hooks'
share here is an upper bound of their share of a real decode step.

Measurement (a shared, noisy machine drifts by tens of percent over seconds): the process is pinned
to one core with one thread; every compiled function is warmed up; then, per repeat, each variant
is timed *paired* with the plain stack in an ABBA block (plain, hooked, hooked, plain; equal call
counts, each part ~`--block-s`), so slow drift cancels inside a pair. Each call is timed on its
own and a part counts its fastest call: interference from other processes only ever adds time,
so the minimum is the estimate least disturbed by it (the reasoning of Python's `timeit`). Many
repeats give one ratio each (fastest plain call / fastest hooked call of the block); the report
gives their median and a 95% bootstrap interval of the median (scipy.stats.bootstrap,
percentile) and says per target whether the interval lies above it (met), below it (missed) or
straddles it (not resolved).

Usage (hold the CPU lock on the shared machine):
    .venv/bin/python -m loadtests.hook_microbench --out loadtests/reports/hook-microbench
On a machine with CUDA the same command runs the GPU plan (full layer counts, bfloat16).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats
from torch import nn

from steer_serve.model_shape import ModelShape
from steer_serve.request import wire_format
from steer_serve.request.resolved_steering import LayerAddition, ResolvedSteering
from steer_serve_vllm.engine import opaque_sites
from steer_serve_vllm.engine.adapters.base import Adapter, LayerSites
from steer_serve_vllm.engine.layer_hooks import install_hooks
from steer_serve_vllm.engine.runtime import SteeringRuntime
from steer_serve_vllm.engine.sites import ModelSites
from steer_serve_vllm.engine.vector_pool import steering_budget

ADAPTER = Adapter("microbench", (), "layers", "pair", "self_attn.o_proj")
STEERED_LAYERS = 10  # of the model's full layer count
MAX_SEQS = 256
PROMPT_LEN = 16  # decode tokens sit at position 16 of a 16-token prompt: the `generated` phase
KS = (0, 32, 256)


@dataclass(frozen=True)
class Dims:
    name: str
    hidden: int
    ffn: int
    heads: int
    model_layers: int  # the real model's decoder layers
    layers: int  # layers built here (fewer on CPU for 8B; ratios are per layer, see steered())

    def steered(self) -> list[int]:
        """10 of the model's layers, scaled to the layers built: evenly spread."""
        count = max(1, round(STEERED_LAYERS * self.layers / self.model_layers))
        return sorted({int(i) for i in np.linspace(0, self.layers - 1, count).round()})


SMOLLM2 = Dims("SmolLM2-135M", hidden=576, ffn=1536, heads=9, model_layers=30, layers=30)
LLAMA3_8B = Dims("Llama-3-8B", hidden=4096, ffn=14336, heads=32, model_layers=32, layers=32)
ALL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PLANS = {  # CPU: the shared 2-core machine, so 2 of Llama-3-8B's 32 layers and fewer batch sizes
    "cpu": {"dtype": torch.float32, "repeats": 12, "stacks": {"smollm2": (SMOLLM2, (1, 16, 64, 256)),
                                                            "llama3-8b": (replace(LLAMA3_8B, layers=2), (1, 16))}},
    "cuda": {"dtype": torch.bfloat16, "repeats": 30, "stacks": {"smollm2": (SMOLLM2, ALL_BATCHES),
                                                              "llama3-8b": (LLAMA3_8B, ALL_BATCHES)}},
}
TARGETS = {"k0": 0.995, "k256": 0.97}  # issue 13: idle, and K = 256 on 10 layers
WARMUP_CALLS = 3
MIN_CALLS = 3
SITES_KS = (0, 256)  # traffic whose hook sites are also timed alone
SITES_CALLS = 50
# Every compiled variant is a functools.partial, and dynamo keys its cache on the one code object
# they share (torch's partial wrapper): 5 variants x (batch 1 specialised, the rest dynamic) x 2
# stacks pass dynamo's default limit of 8, beyond which it runs the frame eagerly (a warning only).
RECOMPILE_LIMIT = 64


class SelfAttentionStandIn(nn.Module):
    """Two projections in attention's place: the output projection's input is laid out per head,
    where the head hook scales it (softmax attention itself is left out)."""

    def __init__(self, dims: Dims) -> None:
        super().__init__()
        self.v_proj = nn.Linear(dims.hidden, dims.hidden, bias=False)
        self.o_proj = nn.Linear(dims.hidden, dims.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.v_proj(x))


class PairLayer(nn.Module):
    """vLLM's Llama decoder layer structure: forward(hidden, residual) -> (hidden, residual)."""

    def __init__(self, dims: Dims) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(dims.hidden, eps=1e-5)
        self.self_attn = SelfAttentionStandIn(dims)
        self.post_attention_layernorm = nn.RMSNorm(dims.hidden, eps=1e-5)
        self.gate_up = nn.Linear(dims.hidden, 2 * dims.ffn, bias=False)
        self.down = nn.Linear(dims.ffn, dims.hidden, bias=False)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden + residual  # [T, D]
        residual = residual + self.self_attn(self.input_layernorm(residual))  # [T, D]
        gate, up = self.gate_up(self.post_attention_layernorm(residual)).chunk(2, dim=-1)  # [T, F] x2
        return self.down(nn.functional.silu(gate) * up), residual  # [T, D], [T, D]


def run_stack(layers: nn.ModuleList, hidden: torch.Tensor) -> torch.Tensor:
    """The stream after the last layer: [T, D] -> [T, D]."""
    residual = torch.zeros_like(hidden)
    for layer in layers:
        hidden, residual = layer(hidden, residual)
    return hidden + residual


def build_layers(dims: Dims, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    with torch.device(device):
        layers = nn.ModuleList(PairLayer(dims) for _ in range(dims.layers)).to(dtype)
    for layer in layers:  # small weights keep the float32/bfloat16 stream finite over 32 layers
        for weight in (layer.self_attn.v_proj.weight, layer.self_attn.o_proj.weight, layer.gate_up.weight,
                       layer.down.weight):
            weight.data.mul_(0.5)
    return layers


def twin(layers: nn.ModuleList, dims: Dims) -> nn.ModuleList:
    """The same layers (shared weight tensors, no copy) as new module objects, to carry hooks."""
    with torch.device("meta"):
        clone = nn.ModuleList(PairLayer(dims) for _ in range(dims.layers))
    clone.load_state_dict(layers.state_dict(), assign=True)
    return clone


class HookedStack:
    """Our hooks on a twin of `layers`, with K configurations registered as live requests."""

    def __init__(self, dims: Dims, layers: nn.ModuleList, device: torch.device, dtype: torch.dtype) -> None:
        self.dims = dims
        self.layers = twin(layers, dims)
        shape = ModelShape(dims.name, hidden_size=dims.hidden, num_layers=dims.layers, num_heads=dims.heads)
        # 64 MiB: 256 configurations x 10 layers fit at Llama-3-8B's D in float32 (the default 32 MiB
        # holds them in bfloat16; beyond the pool, the server's admission makes requests wait)
        budget = steering_budget(dims.layers, dims.hidden, dtype.itemsize, MAX_SEQS, memory_mib=64)
        self.runtime = SteeringRuntime(shape, MAX_SEQS, MAX_SEQS, device, dtype, budget)
        sites = [LayerSites(layer.self_attn.o_proj) for layer in self.layers]
        # as a compiled worker installs them: one opaque op per site, branching per step where no CUDA
        # graph replays a capture (CPU)
        self.idle_skip = device.type == "cpu"
        install_hooks(ModelSites(ADAPTER, self.layers, sites, dims.heads, 0), self.runtime,
                      skip_unused=self.idle_skip, opaque=True)
        rng = np.random.default_rng(1)
        self.vectors = [rng.standard_normal((len(dims.steered()), dims.hidden)).astype(np.float32)
                        for _ in range(max(KS))]  # [K][S, D]
        self._live: list[str] = []

    def configuration(self, index: int) -> ResolvedSteering:
        adds = tuple(LayerAddition(layer, "all", self.vectors[index][i]) for i, layer in enumerate(self.dims.steered()))
        return ResolvedSteering(additions=adds)

    def set_traffic(self, batch: int, k: int) -> list[int]:
        """A decode step of `batch` requests, request i steered by configuration i % k (none when k = 0);
        returns each token's configuration (-1: none)."""
        for req_id in self._live:
            self.runtime.remove_request(req_id)
        self._live = [f"r{i}" for i in range(batch)]
        owners = [i % k if k else -1 for i in range(batch)]
        for req_id, owner in zip(self._live, owners):
            if owner >= 0:
                payload = wire_format.encode(self.configuration(owner))
                self.runtime.add_request(req_id, {wire_format.EXTRA_ARGS_KEY: payload})
        ones = np.ones(batch, dtype=np.int64)
        self.runtime.prepare_step(self._live, ones, ones * PROMPT_LEN, ones * PROMPT_LEN)
        if self.idle_skip:  # as the worker does each step (engine/worker_patches.py; nobody observes here)
            opaque_sites.set_step_idle(not self.runtime.kinds_in_step)
        return owners


def sites_alone(num_layers: int, heads: bool, attention: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Only the hooked stack's hook sites, as its compiled graph calls them (one head-scale and one
    layer-output op per layer, in place, our real edits behind them), without the layers: timed
    alone, their cost is measured directly instead of as the small difference of two noisy step
    times. heads=False: the layer-output ops only, as a server started with --no-head-sites calls them.
    attention, residual: [T, D] (the stand-in attention's output is D wide), edited in place."""
    for layer in range(num_layers):
        if heads:
            torch.ops.steer_serve.head_scale(attention, layer)
        torch.ops.steer_serve.layer_output(residual, attention, layer)
    return residual


def site_buffers(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tensors sites_alone edits in place; static addresses under CUDA graphs, where a
    captured graph may mutate only those."""
    buffers = hidden.clone(), hidden.clone()
    if hidden.device.type == "cuda":
        for buffer in buffers:
            torch._dynamo.mark_static_address(buffer)
    return buffers


def floor_step(pool: torch.Tensor, index: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The physical floor: one gather + add per steered layer. pool [P, D], index [S, T], hidden [T, D]."""
    for layer in range(index.shape[0]):
        hidden = hidden + pool.index_select(0, index[layer])
    return hidden


def compile_fn(fn: Callable[..., torch.Tensor], device: torch.device) -> Callable[..., torch.Tensor]:
    if device.type == "cuda":  # CUDA graphs, one per batch size, as vLLM captures them
        compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

        def call(*args: torch.Tensor) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*args)

        return call
    return torch.compile(fn, dynamic=True)  # one graph for every batch size, as vLLM CPU compiles


def calls_per_block(fn: Callable[[], torch.Tensor], sync: Callable[[], None], block_s: float) -> int:
    """How many calls fill about block_s (after WARMUP_CALLS warm-up calls; MIN_CALLS at least, so
    that a part's fastest call is a minimum over several)."""
    for _ in range(WARMUP_CALLS):
        fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return max(MIN_CALLS, round(block_s / max(time.perf_counter() - start, 1e-6)))


def timed(fn: Callable[[], torch.Tensor], calls: int, sync: Callable[[], None]) -> list[float]:
    """Seconds of each of `calls` calls."""
    seconds = []
    for _ in range(calls):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def paired_ratio(plain: Callable[[], torch.Tensor], other: Callable[[], torch.Tensor], calls: int,
                 sync: Callable[[], None]) -> tuple[float, float, float]:
    """One ABBA block: (plain's fastest call, other's fastest call, their ratio plain / other)."""
    a1 = timed(plain, calls, sync)
    b1 = timed(other, calls, sync)
    b2 = timed(other, calls, sync)
    a2 = timed(plain, calls, sync)
    fastest_plain, fastest_other = min(a1 + a2), min(b1 + b2)
    return fastest_plain, fastest_other, fastest_plain / fastest_other


def median_interval(ratios: list[float]) -> tuple[float, float]:
    """95% bootstrap percentile interval of the median of per-repeat ratios (BCa degenerates for a
    median: its jackknife values repeat)."""
    if len(set(ratios)) < 2:
        return ratios[0], ratios[0]
    result = stats.bootstrap((np.asarray(ratios),), np.median, confidence_level=0.95, n_resamples=2000,
                             method="percentile", random_state=np.random.default_rng(0))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def verdict(interval: tuple[float, float], target: float) -> str:
    low, high = interval
    return "met" if low >= target else "missed" if high < target else "not resolved"


def bench_stack(dims: Dims, batches: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                repeats: int, block_s: float) -> list[dict]:
    layers = build_layers(dims, device, dtype)
    hooked = HookedStack(dims, layers, device, dtype)
    plain_fn = compile_fn(functools.partial(run_stack, layers), device)
    hooked_fn = compile_fn(functools.partial(run_stack, hooked.layers), device)
    floor_fn = compile_fn(floor_step, device)
    sites_fn = compile_fn(functools.partial(sites_alone, dims.layers, True), device)
    residual_sites_fn = compile_fn(functools.partial(sites_alone, dims.layers, False), device)
    pool = hooked.runtime.tables.pool
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for batch in batches:
        hidden = torch.randn(batch, dims.hidden, device=device, dtype=dtype)
        index = torch.randint(1, pool.shape[0], (len(dims.steered()), batch), device=device)  # [S, T]
        hooked.set_traffic(batch, 0)
        same = torch.equal(plain_fn(hidden), hooked_fn(hidden))
        plain = functools.partial(plain_fn, hidden)
        variants = {f"k{k}": functools.partial(hooked_fn, hidden) for k in KS}
        variants["floor"] = functools.partial(floor_fn, pool, index, hidden)
        calls = calls_per_block(plain, sync, block_s)
        for k in KS:  # warm every traffic pattern (slot loading, compiled paths)
            hooked.set_traffic(batch, k)
            calls_per_block(variants[f"k{k}"], sync, block_s)
        samples: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
        for repeat in range(repeats):
            names = list(variants)
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:  # rotate the order
                if name != "floor":
                    hooked.set_traffic(batch, int(name[1:]))
                samples[name].append(paired_ratio(plain, variants[name], calls, sync))
        def fastest_ms(fn: Callable[..., torch.Tensor]) -> float:  # the hook sites alone, fastest of many calls
            sites = functools.partial(fn, *site_buffers(hidden))
            return min(timed(sites, max(SITES_CALLS, calls_per_block(sites, sync, block_s)), sync)) * 1e3

        sites_ms = {}
        for k in SITES_KS:
            hooked.set_traffic(batch, k)
            sites_ms[k] = fastest_ms(sites_fn)
        hooked.set_traffic(batch, 0)  # idle, layer-output sites only (--no-head-sites)
        sites_ms["0_residual"] = fastest_ms(residual_sites_fn)
        rows.append(_row(dims, batch, samples, same, calls) | _sites_columns(sites_ms))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _row(dims: Dims, batch: int, samples: dict[str, list[tuple[float, float, float]]], idle_output_equal: bool,
         calls: int) -> dict:
    plain_s = [p for runs in samples.values() for p, _, _ in runs]
    row = {"model": dims.name, "layers": dims.layers, "model_layers": dims.model_layers, "hidden": dims.hidden,
           "steered_layers": len(dims.steered()), "batch": batch, "calls_per_block": calls,
           "repeats": len(samples["k0"]), "plain_ms": statistics.median(plain_s) * 1e3,
           "idle_output_equal": idle_output_equal}
    for name, runs in samples.items():
        ratios = [r for _, _, r in runs]
        row[f"{name}_ms"] = statistics.median(t for _, t, _ in runs) * 1e3
        row[f"ratio_{name}"] = statistics.median(ratios)
        row[f"ratio_{name}_ci95"] = median_interval(ratios)
        row[f"ratio_{name}_all"] = ratios
    row["floor_share"] = row["floor_ms"] / row["plain_ms"]
    for name, target in TARGETS.items():
        row[f"verdict_{name}"] = verdict(row[f"ratio_{name}_ci95"], target)
    return row


def _sites_columns(sites_ms: dict[int | str, float]) -> dict:
    return {f"sites_k{k}_ms": ms for k, ms in sites_ms.items()}


def pin(core: int) -> None:
    """One thread on one core: no migration, no intra-op threads racing the machine's other users."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)


def _ratio_cell(row: dict, name: str) -> str:
    low, high = row[f"ratio_{name}_ci95"]
    return f"{row[f'ratio_{name}']:.3f} [{low:.3f}, {high:.3f}]"


def _sites_cell(row: dict, k: int | str) -> str:
    ms = row.get(f"sites_k{k}_ms")
    return "-" if ms is None else f"{ms:.3f} ({ms / row['plain_ms']:.2%})"


def write_report(out: Path) -> None:
    """report.md from every results file in `out` (one per plan and model)."""
    lines = [
        "# Hook microbenchmark", "",
        "Generated by `python -m loadtests.hook_microbench` (see its docstring and docs/performance.md). Ratios: "
        "plain step time / hooked step time (1.0 = the hooks are free), each the median of per-repeat ratios of "
        "paired ABBA blocks (plain, hooked, hooked, plain; each side's fastest call), with its 95% bootstrap interval in brackets. Targets: "
        "idle >= 0.995, K = 256 >= 0.97; *met* when the whole interval is at or above the target, *missed* when it "
        "is below, *not resolved* when it straddles it. Floor: one gather + add per steered layer alone, as a "
        "share of the plain step. Sites alone: the hooked stack's hook sites (one head-scale and one layer-output "
        "op per layer, our real edits behind them) compiled and timed without the layers, fastest call, and "
        "their share of the plain step: the hooks' cost measured directly (a step with hooks costs about plain "
        "+ sites, so idle >= 0.995 needs an idle share <= 0.5%, K = 256 >= 0.97 a share <= 3.1%); "
        "*idle, layer-output sites only*: the same without the head-scale ops, as a server started with "
        "`--no-head-sites` calls them. Idle output equal: the compiled hooked stack at K = 0 gives the compiled plain "
        "stack's output bit for bit.", "",
    ]
    for path in sorted(out.glob("*.json")):
        result = json.loads(path.read_text())
        meta = result["meta"]
        lines += [f"## {meta['model']} on {meta['device_name']}", "",
                  f"torch {meta['torch']}, {meta['dtype']}, {meta['threads']} thread(s) pinned to core "
                  f"{meta.get('core', '-')}, {meta['date']}, commit {meta['commit']}, {meta['repeats']} paired "
                  f"repeats per variant, {meta['wall_s']:.0f} s, load average before/after "
                  f"{meta.get('load_before', '-')}/{meta.get('load_after', '-')}. Command: `{meta['command']}`.", "",
                  "| layers built / model (steered) | batch | plain ms | idle ratio [95% CI] | idle target | "
                  "K=32 ratio | K=256 ratio [95% CI] | K=256 target | floor share | sites alone, idle: ms (share) | "
                  "sites alone, K=256: ms (share) | idle, layer-output sites only: ms (share) | idle output equal |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            lines.append(f"| {r['layers']}/{r['model_layers']} ({r['steered_layers']}) | {r['batch']} | "
                         f"{r['plain_ms']:.3f} | {_ratio_cell(r, 'k0')} | {r['verdict_k0']} | "
                         f"{_ratio_cell(r, 'k32')} | {_ratio_cell(r, 'k256')} | {r['verdict_k256']} | "
                         f"{r['floor_share']:.2%} | {_sites_cell(r, 0)} | {_sites_cell(r, 256)} | "
                         f"{_sites_cell(r, '0_residual')} | "
                         f"{'yes' if r['idle_output_equal'] else 'no'} |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("loadtests/reports/hook-microbench"))
    parser.add_argument("--plan", choices=sorted(PLANS), default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--model", choices=["smollm2", "llama3-8b"], action="append",
                        help="repeatable; default: both")
    parser.add_argument("--repeats", type=int, default=None, help="paired repeats per variant (default: the plan's)")
    parser.add_argument("--block-s", type=float, default=0.2, help="seconds per timed part (4 parts a repeat)")
    parser.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)), help="CPU core to pin to")
    args = parser.parse_args()
    plan_name = args.plan or ("cuda" if torch.cuda.is_available() else "cpu")
    plan, device = PLANS[plan_name], torch.device("cuda" if plan_name == "cuda" else "cpu")
    from loadtests.git_commit import current_commit

    args.out.mkdir(parents=True, exist_ok=True)
    repeats = args.repeats or plan["repeats"]
    if device.type == "cpu":
        pin(args.core)
    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    for model in args.model or sorted(plan["stacks"]):
        dims, batches = plan["stacks"][model]
        started, load_before = time.monotonic(), os.getloadavg()[0]
        with torch.inference_mode():
            rows = bench_stack(dims, batches, device, plan["dtype"], repeats, args.block_s)
        meta = {"plan": plan_name, "model": dims.name, "torch": torch.__version__,
                "device_name": torch.cuda.get_device_name() if device.type == "cuda" else
                f"CPU ({platform.processor() or platform.machine()})",
                "dtype": str(plan["dtype"]).removeprefix("torch."), "threads": torch.get_num_threads(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": current_commit(),
                "repeats": repeats, "wall_s": time.monotonic() - started, "block_s": args.block_s,
                "core": args.core if device.type == "cpu" else None,
                "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                "command": f"python -m loadtests.hook_microbench --plan {plan_name} --model {model} "
                           f"--repeats {repeats} --block-s {args.block_s}"}
        (args.out / f"{plan_name}-{model}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        write_report(args.out)


if __name__ == "__main__":
    main()
