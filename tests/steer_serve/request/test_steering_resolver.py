"""Resolution: names and inline vectors become per-layer additions, checked against the model."""

from __future__ import annotations

import numpy as np
import pytest

from steer_serve.request.errors import SteeringError
from steer_serve.request.steering_spec import SteeringSpec
from harness.libraries import resolver, vector


def _spec(*interventions: dict) -> SteeringSpec:
    return SteeringSpec.model_validate({"interventions": list(interventions)})


def test_named_vector_uses_its_own_layers_scaled(tmp_path) -> None:
    lib_vector = vector(layers=(1, 2))
    resolved = resolver(tmp_path, happy=lib_vector).resolve(_spec({"type": "add", "vector": "happy", "scale": 2.0}))
    assert [(a.layer, a.positions) for a in resolved.additions] == [(1, "all"), (2, "all")]
    np.testing.assert_allclose(resolved.additions[0].vector, 2.0 * lib_vector.directions[1])


def test_same_layer_and_positions_compose_by_sum(tmp_path) -> None:
    v = [1.0] * 8
    resolved = resolver(tmp_path).resolve(_spec(
        {"type": "add", "vector": v, "layers": [3], "scale": 1.5},
        {"type": "add", "vector": v, "layers": [3], "scale": -0.5},
        {"type": "add", "vector": v, "layers": [3], "positions": "prompt"},
    ))
    assert [(a.layer, a.positions) for a in resolved.additions] == [(3, "all"), (3, "prompt")]
    np.testing.assert_allclose(resolved.additions[0].vector, np.ones(8))


def test_fingerprint_ignores_spelling(tmp_path) -> None:
    lib_vector = vector(layers=(2,))
    r = resolver(tmp_path, v=lib_vector)
    named = r.resolve(_spec({"type": "add", "vector": "v", "scale": {"2": 3.0}}))
    inline = r.resolve(_spec({"type": "add", "vector": lib_vector.directions[2].tolist(), "layers": [2], "scale": 3.0}))
    other = r.resolve(_spec({"type": "add", "vector": "v", "scale": 3.5}))
    assert named.fingerprint == inline.fingerprint != other.fingerprint


@pytest.mark.parametrize("intervention, fragment", [
    ({"type": "add", "vector": "missing"}, "unknown vector 'missing' (available: v)"),
    ({"type": "add", "vector": "v", "layers": [3]}, "has no direction for layer 3"),
    ({"type": "add", "vector": [0.0] * 7, "layers": [0]}, "inline vector has 7 values"),
    ({"type": "add", "vector": [0.0] * 8, "layers": [6]}, "layer 6 is out of range"),
    ({"type": "add", "vector": [0.0] * 8}, "needs `layers`"),
    ({"type": "add", "vector": "v", "scale": 5000}, "exceeds the limit"),
    ({"type": "add", "vector": "v", "layers": [1], "scale": {"2": 1}}, "per-layer scale covers layers [2]"),
    ({"type": "add", "vector": "v", "scale": {"1": 1, "01": 2}}, "names a layer twice"),
])
def test_refusals_name_the_problem(tmp_path, intervention, fragment) -> None:
    with pytest.raises(SteeringError) as caught:
        resolver(tmp_path, v=vector(layers=(1, 2))).resolve(_spec(intervention))
    assert fragment in str(caught.value)
    assert caught.value.param.startswith("steering.interventions[0]")


def test_too_many_interventions(tmp_path) -> None:
    spec = _spec(*[{"type": "add", "vector": [0.0] * 8, "layers": [0]}] * 17)
    with pytest.raises(SteeringError, match="at most 16 allowed"):
        resolver(tmp_path).resolve(spec)
