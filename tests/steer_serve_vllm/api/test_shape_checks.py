"""Steering checked against the served model's shape, without a server.

The shape is the one the tiny Mixtral's engine reports in the capability handshake (4 layers,
2 heads, 4 experts per layer, top-2, softmax top-k), and each request goes through the gateway, as
in the server: a 400 whose message names the problem. (tests/e2e/test_interventions.py keeps
one such 400 against a real server.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.tiny_models import CONFIGS, TINY_HIDDEN
from steer_serve.library.vector_library import VectorLibrary
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.settings import Settings
from steer_serve_vllm.api.gateway import Forward, Rejection, RequestGateway
from steer_serve.model_shape import ModelShape

V1 = np.random.default_rng(21).standard_normal(TINY_HIDDEN).astype(np.float32).tolist()


def model_shape(model_id: str, config) -> ModelShape:  # noqa: ANN001
    """What the engine reports for a tiny config: every layer MoE when it has experts (softmax top-k)."""
    experts = getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0) or 0
    layers = range(config.num_hidden_layers)
    return ModelShape(model_id, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                      experts_per_layer={layer: experts for layer in layers} if experts else {},
                      experts_per_token=getattr(config, "num_experts_per_tok", 0) if experts else 0,
                      routing={layer: "softmax_topk" for layer in layers} if experts else {})


def _gateway(tmp_path, kind: str) -> RequestGateway:
    shape = model_shape(f"tiny-{kind}", CONFIGS[kind])
    return RequestGateway(SteeringResolver(shape, VectorLibrary(tmp_path, shape), Settings(vector_dir=tmp_path)))


def _answer(gateway: RequestGateway, steering: dict) -> Rejection | Forward:
    body = {"model": "m", "prompt": "Hi", "max_tokens": 2, "steering": steering}
    return gateway.prepare("/v1/completions", json.dumps(body).encode())


def test_the_tiny_mixtral_shape_matches_its_config() -> None:
    shape = model_shape("tiny-mixtral", CONFIGS["mixtral"])
    assert (shape.hidden_size, shape.num_layers, shape.num_heads) == (TINY_HIDDEN, 4, 2)
    assert shape.experts_per_layer == {0: 4, 1: 4, 2: 4, 3: 4} and shape.experts_per_token == 2


@pytest.mark.parametrize("steering, fragment", [
    ({"interventions": [{"type": "experts", "disable": {"0": [9]}}]}, "expert 9 does not exist in layer 0"),
    ({"interventions": [{"type": "experts", "disable": {"7": [0]}}]}, "layer 7 has no experts"),
    ({"interventions": [{"type": "experts", "disable": {"0": [0]}, "force": {"0": [0]}}]}, "both disabled and forced"),
    ({"interventions": [{"type": "experts", "force": {"0": [0, 1, 2]}}]}, "3 experts forced"),
    ({"interventions": [{"type": "experts", "disable": {"0": [0, 1, 2]}}]}, "only 1 experts left enabled"),
    ({"interventions": [{"type": "experts"}]}, "give `disable` and/or `force`"),
    ({"interventions": [{"type": "heads", "mask": {"0": [2]}}]}, "head 2 does not exist"),
    ({"interventions": [{"type": "heads", "mask": {"9": [0]}}]}, "layer 9 is out of range"),
    ({"interventions": [{"type": "heads", "scale": {"0": {"x": 1.0}}}]}, "is not a head number"),
    ({"interventions": [{"type": "ablate", "vector": [0.0] * TINY_HIDDEN, "layers": [0]}]}, "zero norm"),
    ({"interventions": [{"type": "clamp", "vector": V1, "layers": [0]}]}, "value"),
    ({"interventions": [{"type": "ablate", "vector": V1, "layers": [0]}] * 3}, "at most 2 per layer"),
])
def test_invalid_interventions_are_400_naming_the_problem(tmp_path, steering: dict, fragment: str) -> None:
    gateway = _gateway(tmp_path, "mixtral")
    answer = _answer(gateway, steering)
    assert isinstance(answer, Rejection) and answer.status == 400, answer
    assert fragment in json.loads(answer.body())["error"]["message"]
    assert isinstance(_answer(gateway, {"interventions": [{"type": "experts", "disable": {"0": [1]}}]}), Forward)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_experts_on_a_dense_model_is_400(tmp_path, kind: str) -> None:
    answer = _answer(_gateway(tmp_path, kind), {"interventions": [{"type": "experts", "disable": {"0": [0]}}]})
    assert isinstance(answer, Rejection) and answer.status == 400
    assert "no Mixture-of-Experts layers" in answer.message


@pytest.mark.parametrize("kind", ["qwen2_moe", "olmoe"])
def test_other_moe_shapes_accept_their_experts(tmp_path, kind: str) -> None:
    gateway = _gateway(tmp_path, kind)
    assert isinstance(_answer(gateway, {"interventions": [{"type": "experts", "force": {"3": [3]}}]}), Forward)
    assert isinstance(_answer(gateway, {"interventions": [{"type": "experts", "force": {"3": [4]}}]}), Rejection)
