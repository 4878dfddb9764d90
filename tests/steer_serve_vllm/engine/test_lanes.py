from __future__ import annotations

import numpy as np
import pytest
import torch

from steer_serve_vllm.engine.lanes import LaneTable


def _table(capacity: int = 3, max_tokens: int = 16) -> LaneTable:
    return LaneTable(capacity, max_tokens, torch.device("cpu"))


def test_lanes_are_distinct_non_zero_and_stable() -> None:
    table = _table()
    a, b = table.acquire("a"), table.acquire("b")
    assert 0 not in (a, b) and a != b
    assert table.acquire("a") == a and table.lane_of("a") == a and table.lane_of("zzz") == 0
    assert table.num_live == 2


def test_release_frees_the_lane_for_reuse_and_capacity_is_enforced() -> None:
    table = _table(capacity=2)
    table.acquire("a")
    lane_b = table.acquire("b")
    with pytest.raises(RuntimeError, match="lanes are taken"):
        table.acquire("c")
    assert table.release("b") == lane_b and table.release("b") is None
    assert table.acquire("c") == lane_b and table.num_live == 2


def test_prepare_step_maps_tokens_to_lanes_and_positions_in_batch_order() -> None:
    table = _table()
    lane_a, lane_c = table.acquire("a"), table.acquire("c")
    # a: chunk of 3 tokens after 4 computed; b (no lane): 2 tokens; c: one decode token at position 9
    assert table.prepare_step(["a", "b", "c"], np.array([3, 2, 1]), np.array([4, 0, 9]))
    assert table.lanes(6).tolist() == [lane_a] * 3 + [0, 0, lane_c]
    assert table.positions(6).tolist() == [4, 5, 6, 0, 0, 9]


def test_stale_entries_are_cleared_when_a_step_is_smaller_or_has_no_lanes() -> None:
    table = _table()
    lane = table.acquire("a")
    table.prepare_step(["a"], np.array([5]), np.array([0]))
    table.prepare_step(["a"], np.array([1]), np.array([5]))
    assert table.token_lanes.tolist()[:6] == [lane, 0, 0, 0, 0, 0]
    assert table.token_positions.tolist()[:6] == [5, 0, 0, 0, 0, 0]
    assert not table.prepare_step(["b"], np.array([2]), np.array([0]))
    assert not table.token_lanes.any() and not table.token_positions.any()
