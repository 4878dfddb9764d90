from __future__ import annotations

import numpy as np

from steer_serve.request import wire_format
from harness.libraries import combine_additions
from steer_serve.request.resolved_steering import LayerAddition


def test_encode_decode_is_exact() -> None:
    steering = combine_additions([
        LayerAddition(3, "prompt", np.array([0.1, -2.5, 3e-8], dtype=np.float32)),
        LayerAddition(1, "all", np.array([1.0, 2.0, 3.0], dtype=np.float32)),
    ])
    fingerprint, decoded = wire_format.decode(wire_format.encode(steering))
    assert fingerprint == steering.fingerprint == decoded.fingerprint
    assert [(a.layer, a.positions) for a in decoded.additions] == [(1, "all"), (3, "prompt")]
    np.testing.assert_array_equal(decoded.additions[1].vector, steering.additions[1].vector)


def test_a_dose_limit_survives_the_wire_and_changes_the_fingerprint() -> None:
    import dataclasses

    plain = combine_additions([LayerAddition(1, "all", np.array([1.0, 2.0], dtype=np.float32))])
    dosed = dataclasses.replace(plain, max_dose=0.25)
    fingerprint, decoded = wire_format.decode(wire_format.encode(dosed))
    assert decoded.max_dose == 0.25 and fingerprint == dosed.fingerprint != plain.fingerprint
    assert wire_format.decode(wire_format.encode(plain))[1].max_dose is None
    assert "dose" in dosed.kinds and "dose" not in plain.kinds
