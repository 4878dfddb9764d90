"""The vector plan (which edits share a pool row) and the budget formula, at real model sizes on `meta`."""

from __future__ import annotations

import numpy as np
import torch

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import LayerAddition, LayerProjection, ResolvedSteering
from steer_serve_vllm.engine.tables import SteeringTables
from steer_serve_vllm.engine.vector_pool import max_vectors_per_configuration, plan_vectors, steering_budget


def _v(value: float, size: int = 4) -> np.ndarray:
    return np.full(size, value, dtype=np.float32)


def test_phases_with_the_same_additions_share_one_row() -> None:
    plan = plan_vectors(ResolvedSteering(additions=(LayerAddition(1, "all", _v(1)),)), num_layers=3)
    assert plan.num_vectors == 1 and plan.additions == {(1, 0): 0, (1, 1): 0}


def test_phases_with_different_additions_get_their_own_rows() -> None:
    steering = ResolvedSteering(additions=(LayerAddition(1, "all", _v(1)), LayerAddition(1, "prompt", _v(2)),
                                           LayerAddition(2, "generated", _v(3))))
    plan = plan_vectors(steering, num_layers=3)
    assert plan.num_vectors == 3
    assert plan.sums[plan.additions[(1, 0)]] == (0, 1) and plan.sums[plan.additions[(1, 1)]] == (0,)
    assert (2, 0) not in plan.additions and plan.sums[plan.additions[(2, 1)]] == (2,)


def test_a_projection_reading_along_itself_needs_one_row_an_encoder_two() -> None:
    ablate = LayerProjection(0, "all", _v(0.5), 0.0)
    sae = LayerProjection(0, "generated", _v(0.5), 3.0, encoder=_v(1.0), offset=0.1, threshold=0.0)
    plan = plan_vectors(ResolvedSteering(projections=(ablate, sae)), num_layers=2)
    assert plan.num_vectors == 3
    assert [(e.phase, e.k, e.direction == e.reads) for e in plan.projections] == [(0, 0, True), (1, 0, True),
                                                                                 (1, 1, False)]


def test_skipped_edits_take_no_rows() -> None:
    over = tuple(LayerProjection(0, "all", _v(0.5), float(i)) for i in range(3))  # K = 2 per (layer, phase)
    steering = ResolvedSteering(additions=(LayerAddition(7, "all", _v(1)),), projections=over)
    plan = plan_vectors(steering, num_layers=2)
    assert plan.num_vectors == 2 and not plan.additions and len(plan.projections) == 4


def test_the_worst_configuration_fits_the_smallest_pool() -> None:
    layers = 3
    worst = tuple(LayerProjection(layer, phase, _v(0.5), 1.0, encoder=_v(1.0))
                  for layer in range(layers) for phase in ("prompt", "generated") for _ in range(2))
    adds = tuple(LayerAddition(layer, phase, _v(1.0)) for layer in range(layers) for phase in ("all", "prompt"))
    plan = plan_vectors(ResolvedSteering(additions=adds, projections=worst), num_layers=layers)
    assert plan.num_vectors == max_vectors_per_configuration(layers)
    tiny = steering_budget(layers, hidden_size=4, dtype_bytes=4, max_num_seqs=8, memory_mib=1e-6)
    assert tiny.vector_capacity == plan.num_vectors and tiny.slots == 8


def test_default_budget_for_an_8b_model_is_at_most_64_mib_whatever_max_num_seqs() -> None:
    shape = ModelShape("llama-3-8b", hidden_size=4096, num_layers=32, num_heads=32)
    for max_num_seqs in (256, 1024, 4096):
        budget = steering_budget(32, 4096, 2, max_num_seqs)
        tables = SteeringTables(shape, budget.slots, torch.device("meta"), torch.bfloat16, budget.pool_rows)
        assert budget.slots == 256 and budget.vector_capacity == 4095
        assert tables.nbytes <= 64 * 2**20, (max_num_seqs, tables.nbytes)


def test_k_projections_set_the_plan_the_pool_floor_and_the_table_width() -> None:
    """--steering-projections K: K edits per (layer, phase) are planned, the worst configuration with
    K still fits the smallest pool, and the tables are K wide (memory: only the [L, R, K] scalars)."""
    layers, k = 3, 8
    worst = tuple(LayerProjection(layer, phase, _v(0.5), 1.0, encoder=_v(1.0))
                  for layer in range(layers) for phase in ("prompt", "generated") for _ in range(k + 1))
    plan = plan_vectors(ResolvedSteering(projections=worst), num_layers=layers, max_projections=k)
    assert len(plan.projections) == layers * 2 * k and plan.num_vectors == layers * 2 * k * 2
    tiny = steering_budget(layers, hidden_size=4, dtype_bytes=4, max_num_seqs=8, memory_mib=1e-6, projections=k)
    assert tiny.projections == k and tiny.vector_capacity == max_vectors_per_configuration(layers, k) == layers * (2 + 4 * k)
    shape = ModelShape("llama-3-8b", hidden_size=4096, num_layers=32, num_heads=32)
    sizes = {}
    for projections in (2, 8):
        budget = steering_budget(32, 4096, 2, 256, projections=projections)
        tables = SteeringTables(shape, budget.slots, torch.device("meta"), torch.bfloat16, budget.pool_rows,
                                budget.projections)
        assert tables.num_projections == projections and budget.vector_capacity == 4095
        sizes[projections] = tables.nbytes
    rows = 2 * (256 + 1)
    assert sizes[8] - sizes[2] == 32 * rows * 6 * (2 * 4 + 4 * 2 + 1)  # 2 int32 indices, 4 bf16 scalars, 1 bool
