"""Steering values that are finite in JSON (float64) but overflow the engine's float32.

Found by the OpenAPI fuzz (loadtests/fuzz_openapi.py): an inline vector holding 1e300 passed
validation (math.isfinite is true), became inf in float32, and the request answered 200 with
text generated from NaN logits. Such specs must be a 400 naming the field instead.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from steer_serve_vllm.api.gateway import Rejection
from steer_serve.request.errors import SteeringError
from steer_serve.request.steering_spec import SteeringSpec
from harness.libraries import gateway, resolver

HUGE = 1e300  # finite as a Python float, inf as float32
BIG = 3e38  # finite in float32; twice it is not


def _spec(*interventions: dict) -> SteeringSpec:
    return SteeringSpec.model_validate({"interventions": list(interventions)})


@pytest.mark.parametrize("intervention", [
    {"type": "add", "vector": [1.0] * 7 + [HUGE], "layers": [1]},
    {"type": "ablate", "vector": [HUGE] + [1.0] * 7, "layers": [1]},
    {"type": "clamp", "vector": [HUGE] + [1.0] * 7, "layers": [1], "value": 1.0},
])
def test_inline_value_beyond_float32_is_refused(tmp_path, intervention) -> None:
    with pytest.raises(SteeringError, match="does not fit in float32") as error:
        resolver(tmp_path).resolve(_spec(intervention))
    assert error.value.param == "steering.interventions[0].vector"


def test_scaled_vector_overflowing_float32_is_refused(tmp_path) -> None:
    with pytest.raises(SteeringError, match="overflows float32"):
        resolver(tmp_path).resolve(_spec({"type": "add", "vector": [BIG] * 8, "layers": [2], "scale": 10.0}))


def test_sum_of_additions_overflowing_float32_is_refused(tmp_path) -> None:
    one = {"type": "add", "vector": [BIG] * 8, "layers": [2], "scale": 1.0}
    with pytest.raises(SteeringError, match="overflows float32"):
        resolver(tmp_path).resolve(_spec(one, one))


def test_largest_float32_values_still_resolve(tmp_path) -> None:
    resolved = resolver(tmp_path).resolve(_spec({"type": "add", "vector": [BIG] * 8, "layers": [2], "scale": 1.0}))
    assert np.isfinite(resolved.additions[0].vector).all()


def test_gateway_answers_400_for_overflow(tmp_path) -> None:
    body = {"model": "m", "prompt": "hi", "steering": {"interventions": [
        {"type": "add", "vector": [HUGE] * 8, "layers": [1]}]}}
    decision = gateway(tmp_path).prepare("/v1/completions", json.dumps(body).encode(), {})
    assert isinstance(decision, Rejection) and decision.status == 400
    assert decision.param == "steering.interventions[0].vector"
