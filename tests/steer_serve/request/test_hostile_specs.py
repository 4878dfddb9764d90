"""Hostile request bodies through the gateway, without a server: each is a Rejection naming the
problem, never an exception (an exception escapes the ASGI middleware as a 500).

These are the cases that once escaped as exceptions: JSON nested deeper than Python's parser
recurses (RecursionError), integer literals over Python's 4300-digit limit, integers too large
for a float (OverflowError in math.isfinite), and layer/head keys that `str.isdigit()` accepts
but `int()` refuses ('²') or cannot convert (5000 digits). tests/e2e/test_hostile_input.py sends
the same shapes to a real server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer_serve.model_shape import ModelShape
from steer_serve_vllm.api.gateway import Forward, Rejection, RequestGateway
from steer_serve.settings import Settings
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.library.vector_library import VectorLibrary
from harness.libraries import gateway, vector

DEEP = 100_000


def _nested(depth: int, opening: bytes = b"[", closing: bytes = b"]") -> bytes:
    return opening * depth + closing * depth


def _add(**fields) -> dict:
    return {"type": "add", "vector": [0.5] * 8, "layers": [1], "scale": 1.0} | fields


def _raw_steered(intervention_json: str) -> bytes:
    return ('{"model": "m", "prompt": "x", "steering": {"interventions": [' + intervention_json + ']}}').encode()


RAW_CASES: dict[str, tuple[bytes, str]] = {
    "deep-array-in-steering": (b'{"prompt": "x", "steering": ' + _nested(DEEP) + b"}", "nested too deeply"),
    "deep-object-in-steering": (b'{"prompt": "x", "steering": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}",
                                "nested too deeply"),
    "deep-elsewhere-in-body": (b'{"prompt": ' + _nested(DEEP) + b"}", "request body is nested too deeply"),
    "deep-in-xargs-string": (json.dumps({"vllm_xargs": {"steering": "[" * DEEP + "]" * DEEP}}).encode(),
                             "vllm_xargs.steering is nested too deeply"),
    "5000-digit-scale": (_raw_steered('{"type": "add", "vector": "v", "scale": 1' + "0" * 5000 + "}"),
                         "number with too many digits"),
    "400-digit-integer-scale": (_raw_steered('{"type": "add", "vector": "v", "scale": 1' + "0" * 400 + "}"),
                                "scale must be a finite number, got an integer too large for a float"),
    "400-digit-integer-in-vector": (_raw_steered('{"type": "add", "layers": [1], "vector": [1' + "0" * 400
                                                 + ", 0, 0, 0, 0, 0, 0, 0]}"), "vector[0] is an integer too large"),
    "400-digit-clamp-value": (_raw_steered('{"type": "clamp", "vector": "v", "value": -1' + "0" * 400 + "}"),
                              "value must be a finite number"),
    "superscript-layer-key": (json.dumps({"steering": {"interventions": [_add(layers=None, scale={"\u00b2": 1.0})]}})
                              .encode(), "is not a layer number"),
    "5000-char-layer-key": (json.dumps({"steering": {"interventions": [
        {"type": "heads", "mask": {"1" * 5000: [0]}}]}}).encode(), "(5000 characters) is not a layer number"),
    "arabic-indic-head-key": (json.dumps({"steering": {"interventions": [
        {"type": "heads", "scale": {"1": {"\u0661": 0.5}}}]}}).encode(), "is not a head number"),
    "negative-head-key": (json.dumps({"steering": {"interventions": [
        {"type": "heads", "scale": {"1": {"-1": 0.5}}}]}}).encode(), "is not a head number"),
}


@pytest.mark.parametrize("name", sorted(RAW_CASES))
def test_hostile_body_is_a_rejection(tmp_path, name: str) -> None:
    body, fragment = RAW_CASES[name]
    decision = gateway(tmp_path, v=vector()).prepare("/v1/completions", body)
    assert isinstance(decision, Rejection), decision
    assert decision.status == 400 and fragment in decision.message, decision.message


def test_deep_body_on_an_admin_path_is_refused_too(tmp_path) -> None:
    """The middleware parses every POST body: a deep one must not be a 500 on any route."""
    decision = gateway(tmp_path, v=vector()).prepare("/v1/steering/presets", b'{"name": ' + _nested(DEEP) + b"}")
    assert isinstance(decision, Rejection) and "nested too deeply" in decision.message


def test_moderately_nested_json_is_still_validated_normally(tmp_path) -> None:
    body = _raw_steered('{"type": "add", "layers": [1], "vector": ' + _nested(500).decode() + "}")
    decision = gateway(tmp_path, v=vector()).prepare("/v1/completions", body)
    assert isinstance(decision, Rejection) and "invalid steering" in decision.message
    assert isinstance(gateway(tmp_path, v=vector()).prepare("/v1/completions", b"{not json"), Forward)


@pytest.mark.parametrize("scale, fragment", [(1e308, "exceeds the limit"), (-1e308, "exceeds the limit"),
                                             (10**300, "exceeds the limit")])
def test_absurd_scales_are_refused(tmp_path, scale: float, fragment: str) -> None:
    decision = gateway(tmp_path, v=vector()).prepare(
        "/v1/completions", json.dumps({"steering": {"interventions": [_add(scale=scale)]}}).encode())
    assert isinstance(decision, Rejection) and fragment in decision.message, decision


@pytest.mark.parametrize("experts, fragment", [([-1], "expert -1 does not exist in layer 1"),
                                               ([2**63], f"expert {2**63} does not exist in layer 1"),
                                               ([4], "expert 4 does not exist in layer 1 (experts 0..3)")])
def test_expert_ids_out_of_range_on_a_moe_shape(tmp_path: Path, experts: list[int], fragment: str) -> None:
    shape = ModelShape(model_id="moe", hidden_size=8, num_layers=2, num_heads=2,
                       experts_per_layer={0: 4, 1: 4}, experts_per_token=2)
    resolver = SteeringResolver(shape, VectorLibrary.load_dir(tmp_path, shape), Settings(vector_dir=tmp_path))
    body = {"steering": {"interventions": [{"type": "experts", "disable": {"1": experts}}]}}
    decision = RequestGateway(resolver).prepare("/v1/completions", json.dumps(body).encode())
    assert isinstance(decision, Rejection) and fragment in decision.message, decision
