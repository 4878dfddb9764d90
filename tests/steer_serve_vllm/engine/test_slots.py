from __future__ import annotations

import pytest

from steer_serve_vllm.engine.slots import SlotAllocator


def _one(fingerprint: str) -> int:
    return 1


def test_same_fingerprint_shares_a_slot_and_zero_is_never_used() -> None:
    allocator = SlotAllocator(3, pool_rows=8)
    slots, loaded = allocator.assign(["a", "b", "a"], _one)
    assert slots["a"] != slots["b"] and 0 not in slots.values()
    assert loaded == ["a", "b"] and 0 not in allocator.pool_rows("a") + allocator.pool_rows("b")
    assert allocator.pool_rows("a") != allocator.pool_rows("b") and allocator.vectors_in_use == 2


def test_resident_configurations_are_not_reloaded() -> None:
    allocator = SlotAllocator(3, pool_rows=8)
    first, _ = allocator.assign(["a"], _one)
    again, loaded = allocator.assign(["a", "b"], _one)
    assert again["a"] == first["a"] and loaded == ["b"]


def test_least_recently_used_outside_the_batch_is_evicted() -> None:
    allocator = SlotAllocator(2, pool_rows=8)
    allocator.assign(["a"], _one)
    allocator.assign(["b"], _one)
    allocator.assign(["a"], _one)  # b is now least recently used
    slots, loaded = allocator.assign(["a", "c"], _one)
    assert loaded == ["c"] and allocator.num_resident == 2 and slots["c"] != slots["a"]


def test_a_full_pool_evicts_the_least_recently_used_until_the_new_vectors_fit() -> None:
    allocator = SlotAllocator(8, pool_rows=6)  # 5 usable vectors, slots to spare
    allocator.assign(["a"], lambda fp: 2)
    allocator.assign(["b"], lambda fp: 2)
    allocator.assign(["c"], lambda fp: 1)
    assert allocator.vectors_in_use == 5
    rows_of_a = set(allocator.pool_rows("a"))
    _, loaded = allocator.assign(["c", "d"], lambda fp: 2)  # a (least recently used) goes, b stays
    assert loaded == ["d"] and set(allocator.pool_rows("d")) == rows_of_a
    assert allocator.num_resident == 3 and allocator.vectors_in_use == 5


def test_forget_frees_the_slot_and_its_vectors() -> None:
    allocator = SlotAllocator(1, pool_rows=3)
    allocator.assign(["a"], lambda fp: 2)
    allocator.forget("a")
    assert allocator.vectors_in_use == 0
    assert allocator.assign(["b"], lambda fp: 2)[1] == ["b"]


def test_a_batch_larger_than_capacity_is_an_internal_error() -> None:
    with pytest.raises(RuntimeError):
        SlotAllocator(1, pool_rows=8).assign(["a", "b"], _one)
    with pytest.raises(RuntimeError):
        SlotAllocator(4, pool_rows=4).assign(["a", "b"], lambda fp: 2)  # 3 vectors for 4 needed
