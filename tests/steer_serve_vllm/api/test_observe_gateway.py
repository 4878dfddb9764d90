"""The `observe` field at the gateway: what reaches the workers, and what is refused (400 naming the field)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steer_serve.request import observe_wire
from steer_serve.request.observe_spec import CAPTURE_CAP, ObserveResolver, ProbeSpec, read_server_probes
from steer_serve_vllm.api.gateway import Forward, Rejection, RequestGateway
from steer_serve_vllm.api.observe_gateway import ObserveGate
from harness.libraries import SHAPE, library, resolver, vector

CHAT = "/v1/chat/completions"


def _gateway(tmp_path, server_probes: tuple = ()) -> RequestGateway:
    lib = library(tmp_path, v=vector())
    return RequestGateway(resolver(tmp_path), observe=ObserveGate(ObserveResolver(SHAPE, lib), server_probes))


def _prepare(tmp_path, body: dict, path: str = CHAT, **kwargs):
    return _gateway(tmp_path, **kwargs).prepare(path, json.dumps(body).encode())


def _payload(decision: Forward):
    body = json.loads(decision.body)
    return body, observe_wire.decode(body["vllm_xargs"][observe_wire.EXTRA_ARGS_KEY])


def test_probes_and_capture_reach_the_workers_as_unit_directions_with_a_private_salt(tmp_path) -> None:
    observe = {"probes": [{"name": "lib", "vector": "v", "layer": 2, "cosine": True},
                          {"name": "inline", "vector": [3.0] + [0.0] * 7, "layer": 0}],
               "capture": {"layers": [1, 2], "positions": [0, 4]}}
    decision = _prepare(tmp_path, {"model": "m", "messages": [], "observe": observe, "cache_salt": "t"})
    body, (observation_id, observation) = _payload(decision)
    assert "observe" not in body and decision.observation.observation_id == observation_id
    assert decision.observation.reported and body["cache_salt"] == f"t|observe:{observation_id}"
    lib_probe, inline = observation.probes
    expected = vector().directions[2]
    np.testing.assert_allclose(lib_probe.direction, expected / np.linalg.norm(expected), rtol=1e-6)
    assert lib_probe.cosine and inline.direction.tolist() == [1.0] + [0.0] * 7 and inline.layer == 0
    assert observation.capture.layers == (1, 2) and observation.capture.positions == (0, 4)


def test_xargs_json_string_equals_top_level(tmp_path) -> None:
    observe = {"probes": [{"name": "p", "vector": "v", "layer": 1}]}
    _, (_, top) = _payload(_prepare(tmp_path, {"observe": observe}))
    _, (_, xargs) = _payload(_prepare(tmp_path, {"vllm_xargs": {"observe": json.dumps(observe)}}))
    assert top.probes[0].name == xargs.probes[0].name and (top.probes[0].direction == xargs.probes[0].direction).all()


def test_server_probes_ride_on_every_request_without_a_salt(tmp_path) -> None:
    spec = ProbeSpec(name="gloom", vector="v", layer=1)
    probe = ObserveResolver(SHAPE, library(tmp_path, v=vector())).probe(spec, "probes[0]", report=False)
    decision = _prepare(tmp_path, {"model": "m", "messages": []}, server_probes=(probe,))
    body, (_, observation) = _payload(decision)
    assert not decision.observation.reported and "cache_salt" not in body
    assert [p.name for p in observation.probes] == ["gloom"] and not observation.probes[0].report
    assert _prepare(tmp_path, {"input": "x"}, "/v1/responses", server_probes=(probe,)) == Forward()


@pytest.mark.parametrize("observe, param, words", [
    ({"probes": [{"name": "p", "vector": "nope", "layer": 1}]}, "observe.probes[0].vector", "nope"),
    ({"probes": [{"name": "p", "vector": "v", "layer": 6}]}, "observe.probes[0].layer", "out of range"),
    ({"probes": [{"name": "p", "vector": "v", "layer": 4}]}, "observe.probes[0].vector", "no direction for layer 4"),
    ({"probes": [{"name": "p", "vector": [1.0] * 7, "layer": 1}]}, "observe.probes[0].vector", "hidden size"),
    ({"probes": [{"name": "p", "vector": [0.0] * 8, "layer": 1}]}, "observe.probes[0].vector", "non-zero"),
    ({"probes": [{"name": "p", "vector": "v", "layer": 1}] * 2}, "observe.probes[1].name", "twice"),
    ({"probes": [{"name": "p", "vector": "v", "layer": "1"}]}, "observe", "observe.probes[0].layer"),
    ({"probes": [{"name": "p", "vector": "v", "layer": 1, "cos": True}]}, "observe", "observe.probes[0].cos"),
    ({"capture": {"layers": [1], "positions": "first"}}, "observe", "observe.capture.positions"),
    ({"capture": {"layers": [1], "positions": [-1]}}, "observe", "observe.capture.positions"),
    ({"capture": {"layers": [1], "positions": [3, 3]}}, "observe.capture.positions", "twice"),
    ({"capture": {"layers": [1, 2], "positions": list(range(CAPTURE_CAP // 2 + 1))}}, "observe.capture", "cap"),
    ({"capture": {"layers": [0, 1], "positions": "all"}, "max": CAPTURE_CAP}, "observe.capture", "cap"),
    ({"capture": {"layers": [9], "positions": "last"}}, "observe.capture.layers", "out of range"),
    ({}, "observe", "needs `probes` or `capture`"),
])
def test_bad_observe_is_refused_naming_the_field(tmp_path, observe: dict, param: str, words: str) -> None:
    body = {"model": "m", "messages": [], "max_tokens": observe.pop("max", 16), "observe": observe}
    decision = _prepare(tmp_path, body)
    assert isinstance(decision, Rejection) and decision.param == param and words in decision.message, decision


def test_observe_needs_one_sequence_and_a_supported_route(tmp_path) -> None:
    observe = {"probes": [{"name": "p", "vector": "v", "layer": 1}]}
    assert _prepare(tmp_path, {"n": 2, "observe": observe}).param == "n"
    assert _prepare(tmp_path, {"prompt": ["a", "b"], "observe": observe}, "/v1/completions").param == "prompt"
    assert _prepare(tmp_path, {"input": "x", "observe": observe}, "/v1/responses").param == "observe"
    reserved = _prepare(tmp_path, {"vllm_xargs": {observe_wire.EXTRA_ARGS_KEY: "{}"}})
    assert isinstance(reserved, Rejection) and reserved.param == "vllm_xargs"


def test_server_probes_file_is_checked(tmp_path) -> None:
    good = tmp_path / "probes.yaml"
    good.write_text("- {name: gloom, vector: v, layer: 1}\n")
    assert read_server_probes(good)[0].name == "gloom"
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: gloom, vector: v, layr: 1}\n")
    with pytest.raises(ValueError, match="layr"):
        read_server_probes(bad)
