"""The per-step token->row index and the tables, without an engine (CPU tensors)."""

from __future__ import annotations

import numpy as np
import torch

from steer_serve.request import wire_format
from harness.libraries import combine_additions
from steer_serve.request.resolved_steering import LayerAddition
from steer_serve.model_shape import ModelShape
from steer_serve_vllm.engine.runtime import SteeringRuntime
from steer_serve_vllm.engine.vector_pool import SteeringBudget

SHAPE = ModelShape("unit", hidden_size=4, num_layers=3, num_heads=2)
POOL_ROWS = 16


def _runtime() -> SteeringRuntime:
    return SteeringRuntime(SHAPE, max_reqs=4, max_tokens=16, device=torch.device("cpu"), dtype=torch.float32,
                           budget=SteeringBudget(slots=4, pool_rows=POOL_ROWS))


def _delta(runtime: SteeringRuntime, layer: int, num_tokens: int) -> torch.Tensor:
    return runtime.tables.added(layer, runtime.rows(num_tokens))  # [T, D]


def _payload(layer: int, positions: str, value: float) -> dict:
    steering = combine_additions([LayerAddition(layer, positions, np.full(4, value, dtype=np.float32))])
    return {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)}


def test_each_token_gets_its_requests_phase_row() -> None:
    runtime = _runtime()
    runtime.add_request("steered", _payload(1, "generated", 2.0))
    # batch: "plain" prefill of 3 tokens, "steered" with prompt 4: last prompt token + 1 generated token
    runtime.prepare_step(["plain", "steered"], np.array([3, 2]), np.array([0, 3]), np.array([3, 4]))
    delta = _delta(runtime, 1, 6)  # [T, D]
    assert torch.equal(delta[:4], torch.zeros(4, 4))  # plain tokens, then the steered prompt token
    assert torch.equal(delta[4], torch.full((4,), 2.0))  # the steered generated token
    assert torch.equal(_delta(runtime, 0, 6), torch.zeros(6, 4))  # other layers untouched


def test_padding_beyond_the_step_is_no_steering() -> None:
    runtime = _runtime()
    runtime.add_request("r", _payload(0, "all", 1.0))
    runtime.prepare_step(["r"], np.array([5]), np.array([0]), np.array([5]))
    runtime.prepare_step(["r"], np.array([1]), np.array([5]), np.array([5]))
    assert runtime.token_rows[1:16].eq(0).all()


def test_finished_requests_release_their_slot() -> None:
    runtime = _runtime()
    for i in range(6):  # more requests over time than slots
        runtime.add_request(f"r{i}", _payload(0, "all", float(i)))
        runtime.prepare_step([f"r{i}"], np.array([1]), np.array([0]), np.array([1]))
        assert _delta(runtime, 0, 1)[0, 0] == float(i)
        runtime.remove_request(f"r{i}")
    assert runtime.num_live_requests == 0 and runtime.slots.num_resident == 0


def test_unreadable_payload_leaves_request_unsteered_without_raising() -> None:
    runtime = _runtime()
    runtime.add_request("bad", {wire_format.EXTRA_ARGS_KEY: "{not json"})
    runtime.prepare_step(["bad"], np.array([2]), np.array([0]), np.array([2]))
    assert runtime.num_live_requests == 0 and runtime.token_rows.eq(0).all()


def test_stats_follow_requests_configurations_and_slots() -> None:
    runtime = _runtime()
    runtime.add_request("a", _payload(0, "all", 1.0))
    runtime.add_request("b", _payload(0, "all", 1.0))  # same fingerprint as "a": one configuration
    runtime.add_request("c", _payload(1, "all", 2.0))
    runtime.prepare_step(["a", "b", "c"], np.array([1, 1, 1]), np.array([0, 0, 0]), np.array([1, 1, 1]))
    stats = runtime.stats(rank=0)
    assert (stats.live_requests, stats.live_configurations, stats.resident_slots, stats.slot_capacity) == (3, 2, 2, 4)
    # pool P * D * 4 + L * R * ((1 + 2K) int32 indexes + 4K scalars + H head scales) * 4 bytes + L * R * K
    # (TopK flags) + R * 4 (dose) + T_max * 8 bytes, with R = 2 * (4 + 1) and no experts
    rows, k = 10, runtime.tables.num_projections
    assert stats.table_bytes == (POOL_ROWS * 4 * 4 + 3 * rows * (1 + 2 * k + 4 * k + 2) * 4 + 3 * rows * k
                                 + rows * 4 + 16 * 8)
    assert (stats.vector_capacity, stats.vectors_in_use, stats.pool_bytes) == (POOL_ROWS - 1, 2, POOL_ROWS * 16)
    for req_id in ("a", "b", "c"):
        runtime.remove_request(req_id)
    assert runtime.stats(rank=0).model_dump(include={"live_requests", "live_configurations", "resident_slots"}) == {
        "live_requests": 0, "live_configurations": 0, "resident_slots": 0}


def test_a_requests_dose_limit_is_loaded_into_its_rows_and_clips_only_them() -> None:
    import dataclasses

    from steer_serve_vllm.engine.layer_hooks import _clip_row_dose

    runtime = _runtime()
    steering = combine_additions([LayerAddition(1, "all", np.full(4, 10.0, dtype=np.float32))])
    runtime.add_request("dosed", {wire_format.EXTRA_ARGS_KEY: wire_format.encode(
        dataclasses.replace(steering, max_dose=0.5))})
    runtime.add_request("free", _payload(1, "all", 10.0))
    runtime.prepare_step(["dosed", "free"], np.array([2, 2]), np.array([0, 0]), np.array([4, 4]))
    rows = runtime.rows(4)
    dose = runtime.tables.dose.index_select(0, rows)  # [T]
    assert dose.tolist() == [0.5, 0.5, 0.0, 0.0]
    stream = torch.ones(4, 4)  # |h| = 2 per token
    clipped = _clip_row_dose(_delta(runtime, 1, 4), stream, dose)  # [T, D]
    assert torch.allclose(clipped[:2].norm(dim=-1), torch.full((2,), 1.0))  # 0.5 * |h|, direction kept
    assert torch.equal(clipped[2:], _delta(runtime, 1, 4)[2:])  # the other request: untouched
    assert torch.equal(_clip_row_dose(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([0.5])), torch.zeros(1, 4))
