"""The gateway rewrites steered bodies for vLLM and refuses anything it does not understand."""

from __future__ import annotations

import json

from steer_serve.request import wire_format
from steer_serve_vllm.api.gateway import FINGERPRINT_HEADER, Forward, Rejection
from harness.libraries import gateway, vector

SPEC = {"interventions": [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]}


def _prepare(tmp_path, body: dict, path: str = "/v1/chat/completions"):
    return gateway(tmp_path, v=vector()).prepare(path, json.dumps(body).encode())


def test_unsteered_body_is_left_alone(tmp_path) -> None:
    assert _prepare(tmp_path, {"model": "m", "messages": []}) == Forward()


def test_steered_body_carries_payload_salt_and_header(tmp_path) -> None:
    decision = _prepare(tmp_path, {"model": "m", "steering": SPEC, "cache_salt": "tenant", "vllm_xargs": {"k": 1}})
    assert isinstance(decision, Forward)
    body = json.loads(decision.body)
    assert "steering" not in body and body["vllm_xargs"]["k"] == 1
    fingerprint, steering = wire_format.decode(body["vllm_xargs"][wire_format.EXTRA_ARGS_KEY])
    assert fingerprint == steering.fingerprint == decision.fingerprint
    assert body["cache_salt"] == f"tenant|steer:{fingerprint}"
    assert decision.headers == {FINGERPRINT_HEADER: fingerprint}


def test_xargs_json_string_equals_top_level(tmp_path) -> None:
    top = _prepare(tmp_path, {"steering": SPEC})
    xargs = _prepare(tmp_path, {"vllm_xargs": {"steering": json.dumps(SPEC)}})
    assert top.fingerprint == xargs.fingerprint is not None


def test_lookalike_fields_are_refused(tmp_path) -> None:
    for body in ({"Steering": SPEC}, {"steer": SPEC}, {"steering_spec": SPEC}, {"vllm_xargs": {"steerin": "{}"}}):
        decision = _prepare(tmp_path, body)
        assert isinstance(decision, Rejection) and "did you mean" in decision.message, body


def test_non_json_bodies_pass_through_for_vllm_to_answer(tmp_path) -> None:
    assert gateway(tmp_path).prepare("/v1/completions", b"{not json") == Forward()
    assert gateway(tmp_path).prepare("/v1/completions", b"[1, 2]") == Forward()


def test_rejection_body_is_openai_shaped() -> None:
    error = json.loads(Rejection("bad layer", "steering.interventions[0].layers").body())["error"]
    assert error == {"message": "bad layer", "type": "BadRequestError", "param": "steering.interventions[0].layers", "code": 400}


def _salt(tmp_path, prompt: list[int], positions: str) -> str:
    spec = {"interventions": [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0, "positions": positions}]}
    decision = _prepare(tmp_path, {"model": "m", "prompt": prompt, "steering": spec}, "/v1/completions")
    return json.loads(decision.body)["cache_salt"]


def test_phase_dependent_steering_pins_the_prompt_in_the_salt(tmp_path) -> None:
    """A next turn's prompt contains the previous turn's generated tokens: with prompt- or
    generated-only edits their KV differs, so the two requests must not share cached blocks."""
    turn, next_turn = [1, 5, 6], [1, 5, 6, 7, 8]
    assert _salt(tmp_path, turn, "all") == _salt(tmp_path, next_turn, "all")
    for positions in ("prompt", "generated"):
        assert _salt(tmp_path, turn, positions) != _salt(tmp_path, next_turn, positions)
        assert _salt(tmp_path, turn, positions) == _salt(tmp_path, list(turn), positions)


def test_responses_api_is_steerable_other_paths_are_refused(tmp_path) -> None:
    steered = _prepare(tmp_path, {"model": "m", "input": "Hi", "steering": SPEC}, path="/v1/responses")
    assert isinstance(steered, Forward) and wire_format.EXTRA_ARGS_KEY in json.loads(steered.body)["vllm_xargs"]
    refused = _prepare(tmp_path, {"model": "m", "prompt": "Hi", "steering": SPEC}, path="/tokenize")
    assert isinstance(refused, Rejection) and "not supported on /tokenize" in refused.message


COND_SPEC = {"interventions": [{"type": "add", "vector": "v", "layers": [2], "scale": 2.0,
                                "when": {"vector": "v", "layer": 1, "threshold": 0.2}}]}


def test_a_conditional_request_never_shares_cached_prompt_blocks(tmp_path) -> None:
    """CAST reads every prompt token at the condition layer: a prefix-cache hit would skip some."""
    body = {"model": "m", "prompt": [1, 5, 6], "steering": COND_SPEC}
    salts = [json.loads(_prepare(tmp_path, body, "/v1/completions").body)["cache_salt"] for _ in range(2)]
    assert salts[0] != salts[1] and all(s.startswith("steer:") for s in salts)


def test_a_conditional_request_takes_one_sequence(tmp_path) -> None:
    for fields, param in (({"n": 2}, "n"), ({"best_of": 3}, "n"), ({"prompt": [[1, 2], [3, 4]]}, "prompt"),
                          ({"prompt": ["a", "b"]}, "prompt")):
        decision = _prepare(tmp_path, {"model": "m", "prompt": "x", "steering": COND_SPEC} | fields, "/v1/completions")
        assert isinstance(decision, Rejection) and decision.status == 400 and decision.param == param, fields
    assert isinstance(_prepare(tmp_path, {"model": "m", "prompt": [[1, 2]], "steering": COND_SPEC}, "/v1/completions"),
                      Forward)


def test_a_per_token_gate_shares_cached_blocks_and_takes_several_sequences(tmp_path) -> None:
    """compare "token" depends on each token alone: cached KV stays valid, n > 1 is fine."""
    spec = json.loads(json.dumps(COND_SPEC))
    spec["interventions"][0]["when"]["compare"] = "token"
    body = {"model": "m", "prompt": [1, 5, 6], "steering": spec, "n": 2}
    salts = [json.loads(_prepare(tmp_path, body, "/v1/completions").body)["cache_salt"] for _ in range(2)]
    assert salts[0] == salts[1]
