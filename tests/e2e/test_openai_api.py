"""The OpenAI surface: official client with extra_body, streaming, vllm_xargs, headers."""

from __future__ import annotations

import json

import openai
import pytest

from harness.steering_cases import random_vector

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Write one sentence about the sea."}]
STEERING = {"interventions": [{"type": "add", "vector": random_vector(128, 5).tolist(), "layers": [1], "scale": 0.4}]}


@pytest.fixture(scope="module")
def client(tiny_eager_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_eager_server.url + "/v1", api_key="unused")


def _chat(client: openai.OpenAI, model: str, stream: bool = False, **extra_body) -> str:
    kwargs = dict(model=model, messages=MESSAGES, max_tokens=16, temperature=0, extra_body=extra_body)
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = client.chat.completions.create(stream=True, **kwargs)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_openai_client_extra_body_steers(client, tiny_eager_server) -> None:
    model = tiny_eager_server.model
    assert _chat(client, model, steering=STEERING) != _chat(client, model)


def test_streaming_equals_non_streaming(client, tiny_eager_server) -> None:
    model = tiny_eager_server.model
    assert _chat(client, model, stream=True, steering=STEERING) == _chat(client, model, steering=STEERING)
    assert _chat(client, model, stream=True) == _chat(client, model)


def test_vllm_xargs_json_string_is_the_same_request(client, tiny_eager_server) -> None:
    model = tiny_eager_server.model
    via_xargs = _chat(client, model, vllm_xargs={"steering": json.dumps(STEERING)})
    assert via_xargs == _chat(client, model, steering=STEERING)


def test_fingerprint_header_names_what_was_applied(client, tiny_eager_server) -> None:
    kwargs = dict(model=tiny_eager_server.model, messages=MESSAGES, max_tokens=2)
    steered = client.chat.completions.with_raw_response.create(extra_body={"steering": STEERING}, **kwargs)
    xargs = client.chat.completions.with_raw_response.create(
        extra_body={"vllm_xargs": {"steering": json.dumps(STEERING)}}, **kwargs
    )
    plain = client.chat.completions.with_raw_response.create(**kwargs)
    fingerprint = steered.headers.get("x-steer-serve-fingerprint")
    assert fingerprint and len(fingerprint) == 32
    assert xargs.headers.get("x-steer-serve-fingerprint") == fingerprint
    assert "x-steer-serve-fingerprint" not in plain.headers


def test_stream_header_present(tiny_eager_server) -> None:
    body = {"model": tiny_eager_server.model, "messages": MESSAGES, "max_tokens": 4, "stream": True, "steering": STEERING}
    with tiny_eager_server.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-steer-serve-fingerprint"]
        assert any(line.startswith("data: [DONE]") for line in response.iter_lines())


def test_vector_library_listing(tiny_eager_server) -> None:
    data = tiny_eager_server.client.get("/v1/steering/vectors").json()["data"]
    (entry,) = [item for item in data if item["name"] == "tiny_a"]
    assert entry["layers"] == [0, 1, 2, 3] and entry["dim"] == 128
    assert len(entry["sha256"]) == 64 and set(entry["norm"]) == {"0", "1", "2", "3"}
    assert tiny_eager_server.client.get("/v1/steering/vectors/nope").status_code == 404


def test_openapi_schema_publishes_steering(tiny_eager_server) -> None:
    schemas = tiny_eager_server.client.get("/openapi.json").json()["components"]["schemas"]
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        assert schemas[request]["properties"]["steering"]["anyOf"][0]["$ref"] == "#/components/schemas/SteeringSpec"
    add = schemas["AddIntervention"]
    assert add["additionalProperties"] is False and add["properties"]["positions"]["enum"] == ["all", "prompt", "generated"]
