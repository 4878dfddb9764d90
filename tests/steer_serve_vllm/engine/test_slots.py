from __future__ import annotations

import pytest

from steer_serve_vllm.engine.slots import SlotAllocator


def test_same_fingerprint_shares_a_slot_and_zero_is_never_used() -> None:
    slots, loaded = SlotAllocator(3).assign(["a", "b", "a"])
    assert slots["a"] != slots["b"] and 0 not in slots.values()
    assert loaded == ["a", "b"]


def test_resident_configurations_are_not_reloaded() -> None:
    allocator = SlotAllocator(3)
    first, _ = allocator.assign(["a"])
    again, loaded = allocator.assign(["a", "b"])
    assert again["a"] == first["a"] and loaded == ["b"]


def test_least_recently_used_outside_the_batch_is_evicted() -> None:
    allocator = SlotAllocator(2)
    allocator.assign(["a"])
    allocator.assign(["b"])
    allocator.assign(["a"])  # b is now least recently used
    slots, loaded = allocator.assign(["a", "c"])
    assert loaded == ["c"] and allocator.num_resident == 2 and slots["c"] != slots["a"]


def test_forget_frees_the_slot() -> None:
    allocator = SlotAllocator(1)
    allocator.assign(["a"])
    allocator.forget("a")
    assert allocator.assign(["b"])[1] == ["b"]


def test_a_batch_larger_than_capacity_is_an_internal_error() -> None:
    with pytest.raises(RuntimeError):
        SlotAllocator(1).assign(["a", "b"])
