"""Projection microbenchmark: a layer's K projection slots edited slot by slot (`_project` per slot,
as the hooks did before) against the fused pass the hooks run now (`_project_all`), torch only.

    .venv/bin/python -m loadtests.projection_microbench [--slots 8] [--hidden 576]

Random streams and slot vectors, one thread pinned like the hook microbenchmark; per token count,
each variant's fastest of `--calls` calls (interference only adds time), and the ratio. Both
variants give the same edit (tests/steer_serve_vllm/engine/test_feature_clamp_math.py proves it).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

from loadtests.hook_microbench import WARMUP_CALLS, timed
from steer_serve_vllm.engine.layer_hooks import _project, _project_all

TOKENS = (1, 32, 256, 2048)  # decode batches, a prefill chunk


def fastest_ms(fn: Callable[[], torch.Tensor], calls: int) -> float:
    for _ in range(WARMUP_CALLS):
        fn()
    return min(timed(fn, calls, lambda: None)) * 1e3


def variants(tokens: int, slots: int, hidden: int, rescale: bool) -> dict[str, Callable[[], torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    stream = torch.randn(tokens, hidden, generator=gen)  # [T, D]
    directions, encoders = (torch.randn(tokens, slots, hidden, generator=gen) for _ in range(2))  # [T, K, D]
    values, offsets = torch.randn(tokens, slots, generator=gen), torch.randn(tokens, slots, generator=gen)  # [T, K]
    thresholds = torch.zeros(tokens, slots)  # [T, K]
    rescales = torch.full((tokens, slots), float(rescale))  # [T, K]

    def one_by_one() -> torch.Tensor:
        x = torch.zeros_like(stream)
        for k in range(slots):
            x = _project(stream + x, x, directions[:, k], encoders[:, k], values[:, k : k + 1], offsets[:, k : k + 1],
                         thresholds[:, k : k + 1], rescales[:, k : k + 1])
        return x

    def fused() -> torch.Tensor:
        return _project_all(stream, torch.zeros_like(stream), directions, encoders, values, offsets, thresholds,
                            rescales if rescale else None)

    return {"slot by slot": one_by_one, "fused": fused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"K = {args.slots}, D = {args.hidden}, torch {torch.__version__}, 1 thread, fastest of {args.calls} calls\n")
    print("| tokens | rescale | slot by slot ms | fused ms | speed-up |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for rescale in (False, True):
            for tokens in TOKENS:
                times = {name: fastest_ms(fn, args.calls) for name, fn in variants(tokens, args.slots, args.hidden, rescale).items()}
                loop, fused = times["slot by slot"], times["fused"]
                print(f"| {tokens} | {'yes' if rescale else 'no'} | {loop:.3f} | {fused:.3f} | {loop / fused:.2f} |")


if __name__ == "__main__":
    main()
