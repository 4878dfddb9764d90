"""Properties of the wire format and the fingerprint over generated steering (hypothesis).

- encode/decode is exact: every float32 bit pattern (finite, subnormals and -0.0 included),
  every layer, phase, head scale and expert set comes back, with the same fingerprint;
- the payload is one JSON string whose values are flat (what vLLM's msgpack carries);
- the fingerprint is a function of the content: the order edits were collected in does not
  change it, and changing any single value does.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steer_serve.request import wire_format
from steer_serve.request.resolved_steering import (
    ExpertRouting,
    HeadScales,
    LayerAddition,
    LayerProjection,
    ResolvedSteering,
    SteeringBuilder,
)

D, HEADS = 6, 3
positions = st.sampled_from(["all", "prompt", "generated"])
layers = st.integers(0, 7)
floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def vectors(size: int = D):
    return arrays(np.float32, size, elements=floats32)


additions = st.builds(LayerAddition, layers, positions, vectors())
projections = st.builds(LayerProjection, layers, positions, vectors(), floats32)
head_scales = st.builds(HeadScales, layers, positions, vectors(HEADS))
expert_sets = st.lists(st.integers(0, 7), max_size=3, unique=True).map(lambda xs: tuple(sorted(xs)))
routing = st.builds(ExpertRouting, layers, positions, expert_sets, expert_sets)
steerings = st.builds(
    ResolvedSteering,
    st.lists(additions, max_size=4).map(tuple), st.lists(projections, max_size=3).map(tuple),
    st.lists(head_scales, max_size=3).map(tuple), st.lists(routing, max_size=3).map(tuple),
)


def _same(a: ResolvedSteering, b: ResolvedSteering) -> bool:
    def bits(values: np.ndarray) -> bytes:
        return np.ascontiguousarray(values, dtype="<f4").tobytes()

    return (
        [(x.layer, x.positions, bits(x.vector)) for x in a.additions]
        == [(x.layer, x.positions, bits(x.vector)) for x in b.additions]
        and [(x.layer, x.positions, bits(x.direction), np.float32(x.value).tobytes()) for x in a.projections]
        == [(x.layer, x.positions, bits(x.direction), np.float32(x.value).tobytes()) for x in b.projections]
        and [(x.layer, x.positions, bits(x.scales)) for x in a.head_scales]
        == [(x.layer, x.positions, bits(x.scales)) for x in b.head_scales]
        and a.expert_routing == b.expert_routing
    )


@given(steerings)
@settings(max_examples=200, deadline=None)
def test_encode_decode_round_trips_bit_for_bit(steering: ResolvedSteering) -> None:
    fingerprint, decoded = wire_format.decode(wire_format.encode(steering))
    assert _same(decoded, steering)
    assert fingerprint == steering.fingerprint == decoded.fingerprint


@given(steerings)
@settings(max_examples=50, deadline=None)
def test_payload_is_one_json_string_of_flat_values(steering: ResolvedSteering) -> None:
    payload = wire_format.encode(steering)
    assert isinstance(payload, str)

    def flat(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and flat(v) for k, v in value.items())
        if isinstance(value, list):
            return all(flat(v) for v in value)
        return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))

    assert flat(json.loads(payload))


@given(st.lists(additions, min_size=1, max_size=5), st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_fingerprint_does_not_depend_on_the_order_edits_arrive_in(edits: list[LayerAddition], rng) -> None:
    def built(order: list[LayerAddition]) -> ResolvedSteering:
        builder = SteeringBuilder()
        for add in order:
            builder.add(add.layer, add.positions, add.vector.astype(np.float64).astype(np.float32))
        return builder.build()

    # integer-valued vectors: float32 sums are then exact whatever the order
    edits = [LayerAddition(e.layer, e.positions, np.round(np.clip(e.vector, -1e3, 1e3))) for e in edits]
    shuffled = list(edits)
    rng.shuffle(shuffled)
    assert built(edits).fingerprint == built(shuffled).fingerprint


@given(st.lists(additions, min_size=1, max_size=3), st.data())
@settings(max_examples=100, deadline=None)
def test_changing_any_value_changes_the_fingerprint(edits: list[LayerAddition], data) -> None:
    steering = ResolvedSteering(additions=tuple(edits))
    which = data.draw(st.integers(0, len(edits) - 1))
    index = data.draw(st.integers(0, D - 1))
    vector = edits[which].vector.copy()
    new = data.draw(floats32.filter(lambda x: np.float32(x).tobytes() != vector[index].tobytes()))
    vector[index] = new
    changed = list(edits)
    changed[which] = LayerAddition(edits[which].layer, edits[which].positions, vector)
    assert ResolvedSteering(additions=tuple(changed)).fingerprint != steering.fingerprint
