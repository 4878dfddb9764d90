"""vLLM's own launch (`python -m vllm.entrypoints.openai.api_server`, what `vllm serve` runs) with
steer-serve merely installed serves `steering` exactly as `steer-serve serve` does.

No VLLM_PLUGINS, settings as STEER_SERVE_* variables: the general plugin (loaded by vLLM in the
API process before endpoint plugins) adds our endpoint plugin. Same answers and fingerprint as
the `steer-serve serve` server on the same model, the same validation (a misspelt field is a
400), the same routes and metrics; `steering` on /v1/responses too. One extra server.
"""

from __future__ import annotations

import pytest

from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS
from harness.completions import assert_same_generation, assert_steering_visible, completion_body, greedy
from harness.metrics import counter_total
from harness.servers import Server
from harness.steering_cases import Case, Entry, random_vector, tiny_library_directions

pytestmark = pytest.mark.slow

PROMPT = [1, 504, 3458, 314, 260, 1345, 28, 357, 4110, 2113, 9097, 30]
MAX_TOKENS = 10
CASE = Case("library+inline", (
    Entry(tiny_library_directions(TINY_HIDDEN, TINY_LAYERS), {0: 0.1, 2: 0.1}, name="tiny_a"),
    Entry(random_vector(TINY_HIDDEN, 5), {1: 0.3}, "generated"),
))


@pytest.fixture(scope="module")
def native_server(request, tiny_llama_dir, tiny_vector_dir, log_dir) -> Server:
    server = Server(tiny_llama_dir, log_dir, vector_dir=tiny_vector_dir, eager=True, native=True)
    request.addfinalizer(server.stop)
    return server.wait_ready()


def test_steered_answer_equals_steer_serve_serve_and_hf(native_server, tiny_eager_server, tiny_reference) -> None:
    expected = tiny_reference.greedy(PROMPT, MAX_TOKENS, CASE.additions())
    assert_steering_visible(expected, tiny_reference.greedy(PROMPT, MAX_TOKENS))
    native = native_server.client.post("/v1/completions", json=completion_body(
        native_server.model, PROMPT, MAX_TOKENS, CASE.steering()))
    ours = tiny_eager_server.client.post("/v1/completions", json=completion_body(
        tiny_eager_server.model, PROMPT, MAX_TOKENS, CASE.steering()))
    assert native.status_code == ours.status_code == 200, native.text
    assert native.headers["x-steer-serve-fingerprint"] == ours.headers["x-steer-serve-fingerprint"]
    assert native.json()["choices"][0]["logprobs"] == ours.json()["choices"][0]["logprobs"]
    assert_same_generation(greedy(native_server.client, native_server.model, PROMPT, MAX_TOKENS, CASE.steering()),
                           expected)


@pytest.mark.parametrize("body_field, param", [("steerng", "steerng"), ("Steering", "Steering")])
def test_misspelt_field_is_refused(native_server, body_field: str, param: str) -> None:
    body = completion_body(native_server.model, PROMPT, MAX_TOKENS) | {body_field: CASE.steering()}
    response = native_server.client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_invalid_steering_is_refused_naming_the_field(native_server) -> None:
    steering = {"interventions": [{"type": "add", "vector": "tiny_a", "layers": [40], "scale": 1.0}]}
    response = native_server.client.post("/v1/completions", json=completion_body(
        native_server.model, PROMPT, MAX_TOKENS, steering))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "steering.interventions[0].layers"


def test_routes_and_metrics_are_served(native_server) -> None:
    vectors = native_server.client.get("/v1/steering/vectors")
    assert vectors.status_code == 200
    assert [v["name"] for v in vectors.json()["data"]] == ["tiny_a"]
    before = counter_total(native_server.client, "steer_serve:requests")
    greedy(native_server.client, native_server.model, PROMPT, 2, CASE.steering())
    assert counter_total(native_server.client, "steer_serve:requests") == before + 1


def _responses(server: Server, steering: dict | None) -> tuple[int, dict]:
    body = {"model": server.model, "input": "Tell me about the sea.", "max_output_tokens": 8, "temperature": 0.0}
    if steering is not None:
        body["steering"] = steering
    response = server.client.post("/v1/responses", json=body)
    return response.status_code, response.json()


def _output_text(answer: dict) -> str:
    return "".join(part["text"] for item in answer["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def test_responses_api_is_steered_as_on_steer_serve_serve(native_server, tiny_eager_server) -> None:
    steering = {"interventions": [{"type": "add", "vector": "tiny_a", "scale": 4.0}]}
    status, plain = _responses(native_server, None)
    assert status == 200, plain
    status, steered = _responses(native_server, steering)
    assert status == 200, steered
    status, ours = _responses(tiny_eager_server, steering)
    assert status == 200, ours
    assert _output_text(steered) == _output_text(ours)
    assert _output_text(steered) != _output_text(plain)
