"""The observe client's retry policy and error reporting, on scripted HTTP answers.

A scripted transport (httpx.MockTransport) is the only way to make a server answer 503 then 200
on demand; the client itself is the real one."""

from __future__ import annotations

import json

import httpx
import pytest

from steer_serve.tools.observation import ObservationUnavailable
from steer_serve.tools.observe_client import ObserveClient, ServerError

MODELS = {"data": [{"id": "tiny", "root": "/models/tiny"}]}


def _client(answers: list[httpx.Response | Exception], seen: list[httpx.Request], **kwargs) -> ObserveClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return ObserveClient("http://server", transport=httpx.MockTransport(handle), backoff_s=0.0, **kwargs)


def test_transient_failures_are_retried_then_the_answer_returned() -> None:
    seen: list[httpx.Request] = []
    answers = [httpx.ConnectError("refused"), httpx.Response(503, text="busy"), httpx.Response(200, json={"ok": 1})]
    with _client(answers, seen, retries=2) as client:
        assert client.request("POST", "/v1/completions", json={}).json() == {"ok": 1}
    assert len(seen) == 3


def test_a_4xx_is_raised_at_once_with_the_servers_words() -> None:
    seen: list[httpx.Request] = []
    error = {"error": {"message": "observe.probes[0].layer: 99 out of range", "type": "BadRequestError",
                       "param": "observe.probes[0].layer", "code": 400}}
    with _client([httpx.Response(400, json=error)], seen, retries=3) as client:
        with pytest.raises(ServerError, match=r"HTTP 400: observe\.probes\[0\]\.layer: 99 out of range") as caught:
            client.request("POST", "/v1/completions", json={})
    assert caught.value.param == "observe.probes[0].layer" and caught.value.status == 400
    assert len(seen) == 1


def test_retries_run_out() -> None:
    seen: list[httpx.Request] = []
    with _client([httpx.Response(503, text="busy")] * 3, seen, retries=2) as client:
        with pytest.raises(ServerError, match="HTTP 503: busy"):
            client.request("GET", "/health")
    with _client([httpx.ReadTimeout("slow")] * 2, [], retries=1) as client:
        with pytest.raises(ServerError, match="ReadTimeout"):
            client.request("GET", "/health")


def test_complete_sends_token_ids_and_the_observe_field() -> None:
    seen: list[httpx.Request] = []
    observe = {"num_prompt_tokens": 3, "positions": [0, 1, 2], "probes": []}
    answer = httpx.Response(200, json={"choices": [], "steer_serve": {"observe": observe}})
    with _client([answer], seen) as client:
        _, observation = client.complete([5, 6, 7], {"capture": {"layers": [1], "positions": [2]}})
    sent = json.loads(seen[-1].content)
    assert sent["model"] == "tiny" and sent["prompt"] == [5, 6, 7] and sent["max_tokens"] == 1
    assert sent["observe"] == {"capture": {"layers": [1], "positions": [2]}} and sent["temperature"] == 0.0
    assert observation.num_prompt_tokens == 3


def test_map_keeps_input_order_with_bounded_concurrency() -> None:
    with ObserveClient("http://server", concurrency=3) as client:
        assert client.map(lambda x: x * x, range(10)) == [x * x for x in range(10)]
    with pytest.raises(ValueError, match="concurrency"):
        ObserveClient("http://server", concurrency=0)


def test_an_observation_the_server_could_not_make_is_asked_again() -> None:
    seen: list[httpx.Request] = []
    busy = {"choices": [], "steer_serve": {"observe": {"error": "all 33 observation lanes were taken"}}}
    fine = {"choices": [], "steer_serve": {"observe": {"num_prompt_tokens": 1, "positions": [0]}}}
    with _client([httpx.Response(200, json=busy), httpx.Response(200, json=fine)], seen, retries=1) as client:
        assert client.complete([5], {"capture": {"layers": [0], "positions": "last"}})[1].positions == [0]
    with _client([httpx.Response(200, json=busy)] * 2, seen, retries=1) as client:
        with pytest.raises(ObservationUnavailable, match="lanes were taken"):
            client.complete([5], {"capture": {"layers": [0], "positions": "last"}})
