"""Parsing and decoding the `steer_serve.observe` response object (contract v1).

Payloads are encoded here the way the contract states (base64 of little-endian float32,
row-major), independently of the client's decoder.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from steer_serve.tools.observation import ObservationError, observation_from_sse, parse_observation


def _encode(rows: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(rows, dtype="<f4").tobytes()).decode()


def _body(**observe) -> dict:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    base = {"num_prompt_tokens": 3, "positions": [0, 1, 2, 3],
            "probes": [{"name": "gloom", "layer": 1, "projection": [0.5, -1.0, 2.0, 0.25]}],
            "capture": [{"layer": 2, "positions": [1, 2], "shape": [2, 3], "dtype": "float32",
                         "data": _encode(rows), "truncated": False}]}
    return {"id": "cmpl-1", "choices": [], "steer_serve": {"observe": base | observe}}


def test_capture_decodes_to_the_encoded_float32_rows() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 576)).astype(np.float32) * 30
    block = {"layer": 4, "positions": [0, 3, 4, 7, 9], "shape": [5, 576], "dtype": "float32", "data": _encode(rows)}
    observation = parse_observation(_body(capture=[block]))
    positions, decoded = observation.captured(4)
    assert positions == [0, 3, 4, 7, 9]
    assert decoded.dtype == np.float32 and decoded.shape == (5, 576)
    assert np.array_equal(decoded, rows)  # bit-exact: float32 survives base64


def test_probe_lookup_and_values() -> None:
    observation = parse_observation(_body())
    assert observation.probe("gloom").projection == [0.5, -1.0, 2.0, 0.25]
    assert observation.probe("gloom").cosine is None
    with pytest.raises(ObservationError, match=r"no probe 'joy'.*\['gloom'\]"):
        observation.probe("joy")
    with pytest.raises(ObservationError, match=r"no capture of layer 3.*\[2\]"):
        observation.captured(3)


@pytest.mark.parametrize(("change", "message"), [
    ({"data": "not base64!"}, r"capture\[0\]\.data: not base64"),
    ({"data": _encode(np.zeros((2, 2)))}, r"capture\[0\]\.data: 16 bytes, but shape \[2, 3\] of float32 needs 24"),
    ({"positions": [1, 2, 3]}, r"capture\[0\]\.shape: 2 rows for 3 positions"),
    ({"truncated": True}, r"capture\[0\] \(layer 2\) was truncated"),
])
def test_bad_capture_is_named(change: dict, message: str) -> None:
    body = _body()
    body["steer_serve"]["observe"]["capture"][0] |= change
    with pytest.raises(ObservationError, match=message):
        parse_observation(body).captured(2)


@pytest.mark.parametrize(("observe", "message"), [
    ({"probes": [{"name": "g", "layer": 1, "projection": [1.0]}]}, r"probes\[0\]\.projection: 1 values for 4 positions"),
    ({"probes": [{"name": "g", "layer": 1, "projection": [1.0] * 4, "cosine": [0.1]}]}, r"probes\[0\]\.cosine"),
    ({"capture": [{"layer": 2, "positions": [0], "shape": [1, 3], "dtype": "float16", "data": ""}]},
     r"steer_serve\.observe\.capture\[0\]\.dtype"),
    ({"num_prompt_tokens": -1}, r"steer_serve\.observe\.num_prompt_tokens"),
    ({"surprise": 1}, r"steer_serve\.observe\.surprise"),
])
def test_malformed_observation_names_the_field(observe: dict, message: str) -> None:
    with pytest.raises(ObservationError, match=message):
        parse_observation(_body(**observe))


def test_missing_or_failed_observation_is_an_error() -> None:
    with pytest.raises(ObservationError, match="no steer_serve.observe"):
        parse_observation({"id": "x", "choices": [{"text": "hi"}]})
    with pytest.raises(ObservationError, match="observe is null"):
        parse_observation({"steer_serve": {"observe": None}})
    failed = {"steer_serve": {"observe": {"error": "the observation could not be fetched: timeout"}}}
    with pytest.raises(ObservationError, match="could not observe this request: the observation could not be fetched"):
        parse_observation(failed)


def test_stream_observation_comes_from_the_steer_serve_chunk() -> None:
    chunks = [{"id": "c", "choices": [{"text": "a"}]}, {"id": "c", "choices": [{"text": "b"}]}, _body()]
    lines = [f"data: {json.dumps(c)}" for c in chunks] + ["", "data: [DONE]"]
    assert observation_from_sse(lines) == parse_observation(_body())
    with pytest.raises(ObservationError, match="without a steer_serve chunk"):
        observation_from_sse(lines[:2] + ["data: [DONE]"])
