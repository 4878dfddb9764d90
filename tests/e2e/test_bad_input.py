"""Every malformed or out-of-range steering request gets a 400 naming the problem.

After the whole barrage the server still serves a good steered request.
"""

from __future__ import annotations

import json

import pytest

from harness.steering_cases import random_vector

pytestmark = pytest.mark.slow

GOOD_VECTOR = random_vector(128, 3).tolist()


def _add(**fields) -> dict:
    return {"type": "add", "vector": GOOD_VECTOR, "layers": [1], "scale": 1.0} | fields


def _steer(*interventions) -> dict:
    return {"steering": {"interventions": list(interventions)}}


BAD_BODIES = {
    "unknown-vector": (_steer(_add(vector="no_such_vector")), "unknown vector 'no_such_vector'"),
    "wrong-dimension": (_steer(_add(vector=GOOD_VECTOR[:100])), "hidden size is 128"),
    "layer-out-of-range": (_steer(_add(layers=[4])), "layer 4 is out of range"),
    "negative-layer": (_steer(_add(layers=[-1])), "layer -1 is out of range"),
    "layer-missing-from-vector": (_steer(_add(vector="tiny_a", layers=[7])), "layer 7 is out of range"),
    "layer-as-string": (_steer(_add(layers=["1"])), "valid integer"),
    "layer-as-bool": (_steer(_add(layers=[True])), "valid integer"),
    "scale-as-string": (_steer(_add(scale="big")), "scale"),
    "scale-too-large": (_steer(_add(scale=1e6)), "exceeds the limit"),
    "per-layer-scale-bad-key": (_steer(_add(layers=None, scale={"one": 1.0})), "not a layer number"),
    "per-layer-scale-disagrees": (_steer(_add(layers=[1], scale={"2": 1.0})), "per-layer scale covers"),
    "inline-without-layers": (_steer(_add(layers=None)), "needs `layers`"),
    "duplicate-layers": (_steer(_add(layers=[1, 1])), "must not repeat"),
    "bad-positions": (_steer(_add(positions="middle")), "positions"),
    "unknown-type": (_steer(_add(type="multiply")), "does not match any of the expected tags"),
    "unknown-field-in-intervention": (_steer(_add(layer=1)), "Extra inputs are not permitted"),
    "unknown-field-in-steering": ({"steering": {"interventions": [_add()], "mode": "x"}}, "Extra inputs"),
    "empty-interventions": (_steer(), "at least 1"),
    "too-many-interventions": (_steer(*[_add() for _ in range(17)]), "at most 16 allowed"),
    "too-many-values": (_steer(_add(vector=[0.0] * 70000)), "at most 65536"),
    "steering-not-object": ({"steering": [1, 2]}, "invalid steering"),
    "misspelt-top-level": ({"steerng": {"interventions": [_add()]}}, "did you mean 'steering'"),
    "misspelt-in-xargs": ({"vllm_xargs": {"steer": "{}"}}, "did you mean 'vllm_xargs.steering'"),
    "xargs-not-json": ({"vllm_xargs": {"steering": "{nope"}}, "not valid JSON"),
    "xargs-reserved-key": ({"vllm_xargs": {"steer_serve": "{}"}}, "reserved"),
    "both-places": ({**_steer(_add()), "vllm_xargs": {"steering": json.dumps({"interventions": [_add()]})}},
                    "not both"),
}


def _post(server, body: dict, path: str = "/v1/completions"):
    payload = {"model": server.model, "prompt": "Hello", "max_tokens": 2} | body
    return server.client.post(path, json=payload)


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_steering_is_a_400_with_a_clear_message(tiny_eager_server, name: str) -> None:
    body, fragment = BAD_BODIES[name]
    response = _post(tiny_eager_server, body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert fragment in message, message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tiny_eager_server, literal: str) -> None:
    vector = json.dumps(GOOD_VECTOR[:-1])[:-1] + f", {literal}]"
    for steering in (
        f'{{"interventions": [{{"type": "add", "vector": {vector}, "layers": [1]}}]}}',
        f'{{"interventions": [{{"type": "add", "vector": "tiny_a", "scale": {literal}}}]}}',
    ):
        raw = f'{{"model": "{tiny_eager_server.model}", "prompt": "Hi", "max_tokens": 2, "steering": {steering}}}'
        response = tiny_eager_server.client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert "finite" in response.json()["error"]["message"]


def test_steering_on_an_endpoint_that_cannot_carry_it(tiny_eager_server) -> None:
    body = {"model": tiny_eager_server.model, "prompt": "Hi", **_steer(_add())}
    response = tiny_eager_server.client.post("/tokenize", json=body)
    assert response.status_code == 400
    assert "not supported on /tokenize" in response.json()["error"]["message"]


def test_oversized_body_is_413(tiny_eager_server) -> None:
    raw = b'{"prompt": "' + b"a" * (33 * 1024 * 1024) + b'"}'
    response = tiny_eager_server.client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_server_still_serves_after_bad_input(tiny_eager_server) -> None:
    assert tiny_eager_server.is_alive()
    response = _post(tiny_eager_server, _steer(_add(vector="tiny_a", layers=[0, 3], scale=0.5)))
    assert response.status_code == 200, response.text
    assert response.headers["x-steer-serve-fingerprint"]
