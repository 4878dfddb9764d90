"""Scheduler admission: a steered request is held back while its configuration would not fit the
workers' slots or vector pool; read off vLLM's real Request objects carrying real wire payloads."""

from __future__ import annotations

import numpy as np
from vllm import SamplingParams
from vllm.v1.request import Request

from steer_serve.request import wire_format
from steer_serve.request.resolved_steering import LayerAddition, ResolvedSteering
from steer_serve_vllm.engine.admission import fits, need_of
from steer_serve_vllm.engine.vector_pool import SteeringBudget


def _request(request_id: str, steering: ResolvedSteering | None) -> Request:
    extra = None if steering is None else {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)}
    return Request(request_id, [1, 2, 3], SamplingParams(max_tokens=4, extra_args=extra), None)


def _adds(*layers: int, value: float = 1.0) -> ResolvedSteering:
    return ResolvedSteering(additions=tuple(LayerAddition(layer, "all", np.full(8, value, np.float32))
                                            for layer in layers))


def test_need_is_the_fingerprint_and_the_planned_vectors() -> None:
    steering = _adds(0, 1, 5)  # layer 5 is outside a 4-layer model: no row
    assert need_of(_request("a", steering), num_layers=4, projections=2) == (steering.fingerprint, 2)
    assert need_of(_request("b", None), num_layers=4, projections=2) == (None, 0)
    broken = Request("c", [1], SamplingParams(max_tokens=1, extra_args={wire_format.EXTRA_ARGS_KEY: "{x"}), None)
    assert need_of(broken, num_layers=4, projections=2) == (None, 0)  # the worker runs it unsteered and logs why


def test_a_configuration_waits_for_a_free_slot() -> None:
    budget = SteeringBudget(slots=2, pool_rows=100)
    admitted: dict[str, int] = {}
    assert fits(admitted, ("a", 1), budget) and fits(admitted, ("b", 1), budget)
    assert not fits(admitted, ("c", 1), budget)
    assert fits(admitted, ("a", 1), budget) and fits(admitted, (None, 0), budget)  # sharing and unsteered: free
    assert admitted == {"a": 1, "b": 1}


def test_a_configuration_waits_for_room_in_the_pool() -> None:
    budget = SteeringBudget(slots=8, pool_rows=6)  # 5 vectors
    admitted: dict[str, int] = {"running": 3}
    assert not fits(admitted, ("big", 3), budget)
    assert fits(admitted, ("small", 2), budget) and admitted == {"running": 3, "small": 2}
