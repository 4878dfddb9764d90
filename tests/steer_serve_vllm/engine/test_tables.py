"""The pooled tables hold exactly what the per-slot layout held: the same values, in the table
dtype, summed in the same order (bfloat16 rounding included), and slots never see each other's rows."""

from __future__ import annotations

import numpy as np
import torch

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import LayerAddition, LayerProjection, ResolvedSteering
from steer_serve_vllm.engine.slots import SlotAllocator
from steer_serve_vllm.engine.tables import SteeringTables

D, LAYERS = 16, 3
SHAPE = ModelShape("unit", hidden_size=D, num_layers=LAYERS, num_heads=2)
DTYPE = torch.bfloat16


def _random(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=D).astype(np.float32)


def _load(configs: dict[str, ResolvedSteering], slots: int = 4, pool_rows: int = 64):
    tables = SteeringTables(SHAPE, slots, torch.device("cpu"), DTYPE, pool_rows)
    allocator = SlotAllocator(slots, pool_rows)
    slot_of, _ = allocator.assign(list(configs), lambda fp: tables.plan(configs[fp]).num_vectors)
    for fingerprint, steering in configs.items():
        tables.load(slot_of[fingerprint], steering, allocator.pool_rows(fingerprint))
    return tables, slot_of


def _per_slot_sum(steering: ResolvedSteering, layer: int, phase: int) -> torch.Tensor:
    """What the per-slot tables held: a zero row in the table dtype, += each addition in request order."""
    row = torch.zeros(D, dtype=DTYPE)
    for add in steering.additions:
        if add.layer == layer and phase in {"all": (0, 1), "prompt": (0,), "generated": (1,)}[add.positions]:
            row += torch.from_numpy(add.vector).to(DTYPE)
    return row


def test_summed_additions_are_bit_identical_to_the_per_slot_sum() -> None:
    a = ResolvedSteering(additions=(LayerAddition(1, "all", _random(1)), LayerAddition(1, "prompt", _random(2)),
                                    LayerAddition(1, "all", _random(3)), LayerAddition(2, "generated", _random(4))))
    b = ResolvedSteering(additions=(LayerAddition(1, "all", _random(5)),))
    tables, slot_of = _load({"a": a, "b": b})
    for name, steering in (("a", a), ("b", b)):
        for layer in range(LAYERS):
            rows = torch.tensor([2 * slot_of[name], 2 * slot_of[name] + 1])
            got = tables.added(layer, rows)  # [2, D]
            for phase in (0, 1):
                assert torch.equal(got[phase], _per_slot_sum(steering, layer, phase)), (name, layer, phase)
    assert torch.equal(tables.added(1, torch.tensor([0, 1])), torch.zeros(2, D, dtype=DTYPE))  # slot 0


def test_projection_rows_hold_direction_encoder_and_scalars() -> None:
    ablate = LayerProjection(0, "all", _random(6), 0.0)
    sae = LayerProjection(0, "generated", _random(7), 3.0, encoder=_random(8), offset=0.25, threshold=0.0,
                          rescale=True)
    tables, slot_of = _load({"p": ResolvedSteering(projections=(ablate, sae))})
    row = 2 * slot_of["p"]
    directions, encoders = tables.projection_vectors(0, torch.tensor([row, row + 1]))  # [2, K, D]
    as_table = lambda values: torch.from_numpy(values).to(DTYPE)  # noqa: E731
    assert torch.equal(directions[0, 0], as_table(ablate.direction)) and torch.equal(encoders[0, 0], directions[0, 0])
    assert torch.equal(directions[0, 1], torch.zeros(D, dtype=DTYPE))  # unused k: the zero vector, no edit
    assert torch.equal(directions[1, 1], as_table(sae.direction)) and torch.equal(encoders[1, 1], as_table(sae.reads))
    assert tables.proj_value[0, row + 1].tolist() == [0.0, 3.0] and tables.proj_rescale[0, row + 1].tolist() == [0, 1]
    assert tables.proj_threshold[0, row, 1] == float("-inf") and tables.proj_offset[0, row + 1, 1] == 0.25


def test_reloading_a_slot_clears_what_the_previous_configuration_left() -> None:
    first = ResolvedSteering(additions=(LayerAddition(2, "all", _random(9)),),
                             projections=(LayerProjection(1, "all", _random(10), 1.0),))
    second = ResolvedSteering(additions=(LayerAddition(0, "prompt", _random(11)),))
    tables = SteeringTables(SHAPE, 1, torch.device("cpu"), DTYPE, pool_rows=8)
    allocator = SlotAllocator(1, pool_rows=8)
    for name, steering in (("first", first), ("second", second)):
        slot_of, _ = allocator.assign([name], lambda fp, s=steering: tables.plan(s).num_vectors)
        tables.load(slot_of[name], steering, allocator.pool_rows(name))
    rows = torch.tensor([2, 3])
    assert torch.equal(tables.added(2, rows), torch.zeros(2, D, dtype=DTYPE))
    assert torch.equal(tables.projection_vectors(1, rows)[0], torch.zeros(2, 2, D, dtype=DTYPE))
    assert torch.equal(tables.added(0, rows)[0], _per_slot_sum(second, 0, 0))
    assert allocator.vectors_in_use == 1
