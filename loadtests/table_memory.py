"""Steering-table memory as the code allocates it (`SteeringTables.nbytes`), at GPU-model sizes.

Builds the real tables on PyTorch's `meta` device (shapes and dtypes, no memory) for Llama-3-8B and
Llama-3-70B dimensions, bfloat16, at max_num_seqs 256 and 1024, with the default budget
(`--steering-memory 32`, `--steering-slots 256`), and prints a markdown table next to the
closed-form formula it must equal and to what the per-slot layout before the shared vector pool
allocated (every slot holding [D] rows for every layer). Usage: `.venv/bin/python -m loadtests.table_memory`.
"""

from __future__ import annotations

import torch

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import DEFAULT_PROJECTIONS_PER_LAYER
from steer_serve_vllm.engine.tables import SteeringTables
from steer_serve_vllm.engine.vector_pool import steering_budget

MODELS = {
    "Llama-3-8B": ModelShape("llama-3-8b", hidden_size=4096, num_layers=32, num_heads=32),
    "Llama-3-70B": ModelShape("llama-3-70b", hidden_size=8192, num_layers=80, num_heads=64),
}
MAX_NUM_SEQS = (256, 1024)
DTYPE = torch.bfloat16


def formula_bytes(shape: ModelShape, max_num_seqs: int, dtype_bytes: int, experts: int = 0) -> int:
    """P x D x b  +  L x R x ((1 + 2K) x 4 + (4K + H) x b + K + 4E)  +  R x 4, where

    R = 2 (min(max_num_seqs, slots) + 1) table rows, P = max(floor(memory / (D x b)), 1 + L (2 + 4K))
    pool rows. The pool holds the vectors; per layer and row: an int32 pool index for the addition
    and two per projection (direction, encoder row), four scalars and a TopK flag per projection, the
    head scales, float32 router biases; per row the policy's float32 dose limit."""
    budget = steering_budget(shape.num_layers, shape.hidden_size, dtype_bytes, max_num_seqs)
    rows, k = 2 * (budget.slots + 1), budget.projections
    per_row = (1 + 2 * k) * 4 + (4 * k + max(shape.num_heads, 1)) * dtype_bytes + k + experts * 4
    return budget.pool_rows * shape.hidden_size * dtype_bytes + shape.num_layers * rows * per_row + rows * 4


def per_slot_layout_bytes(shape: ModelShape, max_num_seqs: int, dtype_bytes: int) -> int:
    """Before the pool: L x R x ((1 + 2K) D + 4K + H) x b + R x 4 with R = 2 (max_num_seqs + 1)."""
    rows, k = 2 * (max_num_seqs + 1), DEFAULT_PROJECTIONS_PER_LAYER
    per_row = (1 + 2 * k) * shape.hidden_size + 4 * k + max(shape.num_heads, 1)
    return shape.num_layers * rows * per_row * dtype_bytes + rows * 4


def main() -> None:
    print("| model | max_num_seqs | slots | pool vectors | tables (SteeringTables.nbytes) | formula | per-slot layout before |")
    print("|---|---|---|---|---|---|---|")
    for name, shape in MODELS.items():
        for seqs in MAX_NUM_SEQS:
            budget = steering_budget(shape.num_layers, shape.hidden_size, DTYPE.itemsize, seqs)
            measured = SteeringTables(shape, budget.slots, torch.device("meta"), DTYPE, budget.pool_rows).nbytes
            expected = formula_bytes(shape, seqs, DTYPE.itemsize)
            assert measured == expected, (name, seqs, measured, expected)
            before = per_slot_layout_bytes(shape, seqs, DTYPE.itemsize)
            print(f"| {name} | {seqs} | {budget.slots} | {budget.vector_capacity:,} | {measured / 2**20:,.1f} MiB | "
                  f"equal | {before / 2**20:,.0f} MiB |")


if __name__ == "__main__":
    main()
