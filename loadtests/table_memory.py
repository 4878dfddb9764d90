"""Steering-table memory as the code allocates it today (`SteeringTables.nbytes`), at GPU-model sizes.

Builds the real tables on PyTorch's `meta` device (shapes and dtypes, no memory) for Llama-3-8B and
Llama-3-70B dimensions, bfloat16, at max_num_seqs 256 and 1024, and prints a markdown table next to
the closed-form formula it must equal. Usage: `.venv/bin/python -m loadtests.table_memory`.
"""

from __future__ import annotations

import torch

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import MAX_PROJECTIONS_PER_LAYER
from steer_serve_vllm.engine.tables import SteeringTables

MODELS = {
    "Llama-3-8B": ModelShape("llama-3-8b", hidden_size=4096, num_layers=32, num_heads=32),
    "Llama-3-70B": ModelShape("llama-3-70b", hidden_size=8192, num_layers=80, num_heads=64),
}
MAX_NUM_SEQS = (256, 1024)
DTYPE = torch.bfloat16


def formula_bytes(shape: ModelShape, slots: int, dtype_bytes: int, experts: int = 0) -> int:
    """L x R x ((1 + 2K) D + 4K + H) x b  +  L x R x E x 4  +  R x 4, with R = 2 (slots + 1) rows.

    Per layer and row: the addition [D]; K projections, each a direction and an encoder row [D]
    and four scalars (value, offset, threshold, rescale: SAE feature clamps are projections);
    the head scales [H]; float32 router biases [E]. Per row: the policy's float32 dose limit."""
    rows, k = 2 * (slots + 1), MAX_PROJECTIONS_PER_LAYER
    per_row = (1 + 2 * k) * shape.hidden_size + 4 * k + max(shape.num_heads, 1)
    return shape.num_layers * rows * (per_row * dtype_bytes + experts * 4) + rows * 4


def main() -> None:
    print("| model | max_num_seqs | tables (SteeringTables.nbytes) | formula |")
    print("|---|---|---|---|")
    for name, shape in MODELS.items():
        for slots in MAX_NUM_SEQS:
            measured = SteeringTables(shape, slots, torch.device("meta"), DTYPE).nbytes
            expected = formula_bytes(shape, slots, DTYPE.itemsize)
            assert measured == expected, (name, slots, measured, expected)
            print(f"| {name} | {slots} | {measured / 2**20:,.0f} MiB ({measured / 1e9:.2f} GB) | equal |")


if __name__ == "__main__":
    main()
