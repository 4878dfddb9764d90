"""Conditional steering (CAST `when`): validation, resolution rules, wire format, and the
condition's maths against IBM's formula written out directly (P = v v^T / v.v; cos(h, tanh(P h)))."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from harness.libraries import resolver, vector
from steer_serve.engine_capabilities import LayerCapability, WorkerCapabilities, merge
from steer_serve.library.vector_library import VectorLibrary
from steer_serve.request import wire_format
from steer_serve.request.conditions import condition_met, similarity
from steer_serve.request.errors import SteeringError
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.request.steering_spec import SteeringSpec
from steer_serve.settings import Settings

WHEN = {"vector": "cond", "layer": 1, "threshold": 0.25}


def _spec(*interventions: dict) -> SteeringSpec:
    return SteeringSpec.model_validate({"interventions": list(interventions)})


def _add(layers: list[int], when: dict | None = WHEN, **extra) -> dict:
    return {"type": "add", "vector": [1.0] * 8, "layers": layers, **({"when": when} if when else {}), **extra}


def _resolver(tmp_path):
    return resolver(tmp_path, cond=vector(layers=(1, 2), seed=3), v=vector(layers=(1, 2)))


def ibm_similarity(h: np.ndarray, v: np.ndarray) -> float:
    """IBM activation-steering, literally: condition_projector = torch.ger(v, v) / torch.dot(v, v)
    (malleable_model.py), projected = tanh(projector @ h), dot(h, projected) / (|h| |projected|)
    (leash_layer.py compute_similarity)."""
    projector = np.outer(v, v) / np.dot(v, v)
    projected = np.tanh(projector @ h)
    return float(np.dot(h, projected) / (np.linalg.norm(h) * np.linalg.norm(projected)))


@pytest.mark.parametrize("seed", range(5))
def test_similarity_is_ibms_formula(seed) -> None:
    rng = np.random.default_rng(seed)
    v, hidden = rng.standard_normal(64) * 3, rng.standard_normal((7, 64)) * 2
    for h in (hidden.mean(axis=0), hidden[-1], -hidden[0]):
        assert similarity(h, v) == pytest.approx(ibm_similarity(h, v), abs=1e-12)


def test_similarity_ignores_the_norm_and_sign_of_the_vector() -> None:
    rng = np.random.default_rng(0)
    v, h = rng.standard_normal(16), rng.standard_normal(16)
    assert similarity(h, 5 * v) == pytest.approx(similarity(h, v), abs=1e-12)
    assert similarity(h, -v) == pytest.approx(similarity(h, v), abs=1e-12)  # P = v v^T / v.v


def test_above_is_ibms_smaller_comparator_and_strict() -> None:
    # IBM: "smaller" (threshold is smaller) -> met when sim > threshold; "larger" -> sim < threshold
    assert condition_met(0.3, 0.25, above=True) and not condition_met(0.25, 0.25, above=True)
    assert condition_met(0.2, 0.25, above=False) and not condition_met(0.25, 0.25, above=False)


def test_condition_resolves_to_a_unit_direction_and_the_gated_layers(tmp_path) -> None:
    cond = vector(layers=(1, 2), seed=3)
    resolved = _resolver(tmp_path).resolve(_spec(_add([2, 3], WHEN | {"above": False, "compare": "last"}), _add([4], None)))
    c = resolved.condition
    assert (c.layer, c.threshold, c.above, c.compare, c.gated_layers) == (1, 0.25, False, "last", (2, 3))
    np.testing.assert_allclose(c.direction, cond.directions[1] / np.linalg.norm(cond.directions[1]), rtol=1e-6)
    assert "condition" in resolved.kinds


def test_condition_on_features_and_projections_is_gated_too(tmp_path) -> None:
    resolved = _resolver(tmp_path).resolve(_spec(
        {"type": "ablate", "vector": "v", "layers": [2], "when": WHEN}, _add([0])))
    assert resolved.condition.gated_layers == (0, 2)


def test_wire_format_and_fingerprint_carry_the_condition(tmp_path) -> None:
    r = _resolver(tmp_path)
    resolved = r.resolve(_spec(_add([2])))
    fingerprint, decoded = wire_format.decode(wire_format.encode(resolved))
    assert fingerprint == resolved.fingerprint and decoded.condition.gated_layers == (2,)
    np.testing.assert_array_equal(decoded.condition.direction, resolved.condition.direction)
    assert decoded.condition.threshold == 0.25 and decoded.condition.above and decoded.condition.compare == "mean"
    unconditional = r.resolve(_spec(_add([2], None)))
    other_threshold = r.resolve(_spec(_add([2], WHEN | {"threshold": 0.3})))
    assert len({resolved.fingerprint, unconditional.fingerprint, other_threshold.fingerprint}) == 3
    assert wire_format.decode(wire_format.encode(unconditional))[1].condition is None


@pytest.mark.parametrize("when, param, fragment", [
    ({"vector": "missing", "layer": 1, "threshold": 0.1}, "when.vector", "unknown vector 'missing'"),
    ({"vector": "cond", "layer": 6, "threshold": 0.1}, "when.layer", "layer 6 is out of range"),
    ({"vector": "cond", "layer": 3, "threshold": 0.1}, "when.vector", "has no direction for layer 3"),
    ({"vector": [1.0] * 7, "layer": 1, "threshold": 0.1}, "when.vector", "inline vector has 7 values"),
    ({"vector": [0.0] * 8, "layer": 1, "threshold": 0.1}, "when.vector", "zero norm"),
])
def test_bad_conditions_are_refused_naming_the_field(tmp_path, when, param, fragment) -> None:
    with pytest.raises(SteeringError) as caught:
        _resolver(tmp_path).resolve(_spec(_add([2], when)))
    assert fragment in str(caught.value)
    assert caught.value.param == f"steering.interventions[0].{param}"


@pytest.mark.parametrize("when, fragment", [
    ({"vector": "cond", "layer": 1, "threshold": float("nan")}, "threshold must be a finite number"),
    ({"vector": "cond", "layer": 1, "threshold": "0.1"}, "threshold"),
    ({"vector": "cond", "layer": 1.5, "threshold": 0.1}, "layer"),
    ({"vector": "cond", "layer": 1, "threshold": 0.1, "above": 1}, "above"),
    ({"vector": "cond", "layer": 1, "threshold": 0.1, "compare": "max"}, "compare"),
    ({"vector": "cond", "layer": 1}, "threshold"),
    ({"vector": "cond", "layer": 1, "threshold": 0.1, "per_token": True}, "per_token"),
    ({"vector": [1.0, float("inf")], "layer": 1, "threshold": 0.1}, "vector[1] is inf"),
])
def test_malformed_conditions_fail_validation_naming_the_field(when, fragment) -> None:
    with pytest.raises(ValidationError) as caught:
        _spec(_add([2], when))
    assert fragment in str(caught.value)


def test_when_is_only_for_residual_stream_edits() -> None:
    with pytest.raises(ValidationError, match="heads.when"):
        _spec({"type": "heads", "mask": {"1": [0]}, "when": WHEN})


def test_one_condition_per_request(tmp_path) -> None:
    with pytest.raises(SteeringError, match="one condition") as caught:
        _resolver(tmp_path).resolve(_spec(_add([2]), _add([3], WHEN | {"threshold": 0.5})))
    assert caught.value.param == "steering.interventions[1].when"
    _resolver(tmp_path).resolve(_spec(_add([2]), _add([3])))  # the same condition twice is one condition


def test_a_layer_is_all_conditional_or_all_unconditional(tmp_path) -> None:
    with pytest.raises(SteeringError, match="layer 2 has a conditional edit") as caught:
        _resolver(tmp_path).resolve(_spec(_add([2, 3]), _add([2], None)))
    assert caught.value.param == "steering.interventions[1].when"


def test_a_condition_layer_the_engine_cannot_read_is_refused(tmp_path) -> None:
    layers = [LayerCapability(layer=i, residual=i != 1, residual_refused=None if i != 1 else "not owned")
              for i in range(3)]
    shape = merge("unit", [WorkerCapabilities(rank=0, architecture="llama", hidden_size=8, layers=layers)])
    r = SteeringResolver(shape, VectorLibrary.load_dir(tmp_path, shape), Settings(vector_dir=tmp_path))
    with pytest.raises(SteeringError, match="layer 1 cannot take `when` edits on this model: not owned") as caught:
        r.resolve(_spec(_add([2], {"vector": [1.0] * 8, "layer": 1, "threshold": 0.0})))
    assert caught.value.param == "steering.interventions[0].when.layer"


def test_a_per_token_gate_cannot_gate_layers_before_its_condition_layer(tmp_path) -> None:
    r = _resolver(tmp_path)
    with pytest.raises(SteeringError, match="layer 1 comes before the condition layer 2") as caught:
        r.resolve(_spec(_add([1, 3], {"vector": "cond", "layer": 2, "threshold": 0.1, "compare": "token"})))
    assert caught.value.param == "steering.interventions[0].when.compare"
    resolved = r.resolve(_spec(_add([2, 3], {"vector": "cond", "layer": 2, "threshold": 0.1, "compare": "token"})))
    assert resolved.condition.compare == "token" and resolved.condition.gated_layers == (2, 3)
    # held decisions may gate earlier layers (they apply from the decision on)
    r.resolve(_spec(_add([1], {"vector": "cond", "layer": 2, "threshold": 0.1})))


def test_under_pipeline_parallelism_a_condition_gates_only_its_own_stage(tmp_path) -> None:
    """Stage 0 runs layers 0-2, stage 1 layers 3-5: the decision taken on stage 0 never reaches stage 1."""
    def stage(rank: int) -> WorkerCapabilities:
        layers = [LayerCapability(layer=i, owned=(i < 3) == (rank == 0), residual=True) for i in range(6)]
        return WorkerCapabilities(rank=rank, architecture="llama", hidden_size=8, layers=layers)

    shape = merge("unit", [stage(0), stage(1)])
    assert shape.stages == {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1}
    r = SteeringResolver(shape, VectorLibrary.load_dir(tmp_path, shape), Settings(vector_dir=tmp_path))
    when = {"vector": [1.0] * 8, "layer": 1, "threshold": 0.0}
    with pytest.raises(SteeringError, match="layer 3 runs on pipeline stage 1, the condition layer 1 on stage 0") as caught:
        r.resolve(_spec(_add([2], when), _add([3], when)))
    assert caught.value.param == "steering.interventions[1].when.layer"
    assert r.resolve(_spec(_add([2], when))).condition.gated_layers == (2,)
