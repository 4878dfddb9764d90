"""Why a compiled steer-serve start took longer than plain vLLM's: what our hooks add to the graph.

Traced hooks put every tensor operation of every edit into the graph at every layer (a traced graph
cannot branch on which interventions a step uses), so the graph, and with it dynamo's trace, AOT
autograd and inductor's lowering, grew with the hooks. Compiled servers now call each site through
one opaque custom op (engine/opaque_sites.py). This counts the FX nodes dynamo captures for the
hook microbenchmark's stack (loadtests/hook_microbench.py: vLLM's Llama layer structure at SmolLM2
dimensions, our real `install_hooks` and `SteeringRuntime`) without hooks, with the opaque sites,
with all hooks traced, and traced with one intervention kind at a time, and times the trace
(dynamo only, no inductor). Node counts are exact; trace seconds are indicative on a shared machine.

    OMP_NUM_THREADS=1 .venv/bin/python -m loadtests.hook_graph_size --layers 30
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import replace
from typing import Any

import torch

from loadtests import hook_microbench as bench
from steer_serve_vllm.engine import layer_hooks

KINDS = ("add", "dose", "projection", "condition", "heads")


def hooked_layers(dims: bench.Dims, layers: torch.nn.ModuleList, kinds: frozenset[str] | None,
                  opaque: bool = False) -> torch.nn.ModuleList:
    """The microbenchmark's hooked twin; `kinds`: trace only these (None: every hook); `opaque`: as
    compiled servers install them now (one custom op per site)."""

    def install_selected(sites: Any, runtime: Any, max_dose: float | None = None, **_: Any) -> Any:
        if kinds is None and not opaque:  # every hook traced, every edit running, as compiled servers did
            return layer_hooks.install_hooks(sites, runtime, max_dose)
        runtime.kinds_in_step = kinds or frozenset()
        if "projection" in runtime.kinds_in_step:  # every projection slot filled, as the traced graph runs them
            runtime.projections_in_step = dict.fromkeys(range(dims.layers), runtime.tables.num_projections)
        return layer_hooks.install_hooks(sites, runtime, max_dose, skip_unused=True, opaque=opaque)

    original, bench.install_hooks = bench.install_hooks, install_selected
    try:
        return bench.HookedStack(dims, layers, torch.device("cpu"), torch.float32).layers
    finally:
        bench.install_hooks = original


def trace(layers: torch.nn.ModuleList, hidden: int) -> tuple[int, float]:
    """(FX nodes, seconds) of dynamo's capture of one decode step of 4 tokens."""
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, _: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(functools.partial(bench.run_stack, layers), backend=capture, dynamic=True)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(torch.randn(4, hidden))
    return sum(len(g.graph.nodes) for g in graphs), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dims = replace(bench.SMOLLM2, layers=args.layers, model_layers=args.layers)
    layers = bench.build_layers(dims, torch.device("cpu"), torch.float32)
    rows = {"no hooks": trace(layers, dims.hidden),
            "opaque sites (compiled servers)": trace(hooked_layers(dims, layers, None, opaque=True), dims.hidden),
            "all hooks traced (compiled servers before)": trace(hooked_layers(dims, layers, None), dims.hidden)}
    for kind in KINDS:
        name = "traced: add only" if kind == "add" else f"traced: add + {kind}"
        rows[name] = trace(hooked_layers(dims, layers, frozenset({"add", kind})), dims.hidden)
    base = rows["no hooks"][0]
    print(f"| SmolLM2 dims, {args.layers} layers | FX nodes | nodes per layer over no hooks | dynamo trace s |")
    print("|---|---|---|---|")
    for name, (nodes, seconds) in rows.items():
        print(f"| {name} | {nodes} | {(nodes - base) / args.layers:.1f} | {seconds:.1f} |")
    print(json.dumps({name: {"nodes": n, "trace_s": round(s, 2)} for name, (n, s) in rows.items()}))


if __name__ == "__main__":
    main()
