"""The relay puts the workers' observation into JSON bodies and SSE streams, and always fetches once."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from steer_serve.request import observe_wire
from steer_serve_vllm.api.observe_gateway import Observation
from steer_serve_vllm.api.observe_relay import ObservationRelay

RESULT = {"status": "done", "num_prompt_tokens": 2, "first_position": 0, "num_computed_tokens": 3, "hidden_size": 2,
          "capture": None, "probes": [
              {"name": "p", "layer": 1, "cosine": False, "report": True,
               "projection": observe_wire.pack(np.array([1.0, 2.0, 3.0, 9.0])), "norm": observe_wire.pack(np.ones(4))},
              {"name": "server", "layer": 0, "cosine": False, "report": False,
               "projection": observe_wire.pack(np.array([2.0, 4.0, 6.0])), "norm": observe_wire.pack(np.ones(3))}]}


def _run(messages: list[dict], reported: bool = True) -> tuple[list[dict], list[str], list[dict]]:
    sent, fetched, recorded = [], [], []

    async def send(message: dict) -> None:
        sent.append(message)

    async def fetch(observation_id: str) -> dict:
        fetched.append(observation_id)
        return RESULT

    async def main() -> None:
        relay = ObservationRelay(send, Observation("oid", reported), fetch, recorded.append)
        for message in messages:
            await relay.send(message)
        relay.finish()
        await asyncio.sleep(0)

    asyncio.run(main())
    return sent, fetched, recorded


def _start(content_type: bytes, length: int | None = None) -> dict:
    headers = [(b"content-type", content_type)] + ([(b"content-length", str(length).encode())] if length else [])
    return {"type": "http.response.start", "status": 200, "headers": headers}


def test_json_body_gets_the_observation_and_a_new_length() -> None:
    body = json.dumps({"id": "cmpl-1", "choices": [{"text": "hi"}]}).encode()
    sent, fetched, recorded = _run([_start(b"application/json", len(body)),
                                    {"type": "http.response.body", "body": body[:5], "more_body": True},
                                    {"type": "http.response.body", "body": body[5:]}])
    start, whole = sent
    payload = json.loads(whole["body"])
    assert dict(start["headers"])[b"content-length"] == str(len(whole["body"])).encode()
    assert payload["choices"] == [{"text": "hi"}] and fetched == ["oid"] and recorded == [RESULT]
    assert payload["steer_serve"]["observe"] == {"num_prompt_tokens": 2, "positions": [0, 1, 2],
                                                 "probes": [{"name": "p", "layer": 1, "projection": [1.0, 2.0, 3.0]}]}
    assert observe_wire.probe_means(RESULT) == {"server": 4.0}


def test_stream_gets_one_chunk_before_done_and_tokens_pass_untouched() -> None:
    first = b'data: {"id":"cmpl-1","object":"text_completion","created":5,"model":"m","choices":[{"text":"a"}]}\n\n'
    sent, fetched, _ = _run([_start(b"text/event-stream"), {"type": "http.response.body", "body": first},
                             {"type": "http.response.body", "body": b"data: [DONE]\n\n"}])
    assert sent[1]["body"] == first and fetched == ["oid"]
    extra, done = sent[2]["body"].split(b"\n\n", 1)
    chunk = json.loads(extra[6:])
    assert done == b"data: [DONE]\n\n"
    assert chunk["id"] == "cmpl-1" and chunk["object"] == "text_completion" and chunk["choices"] == []
    assert chunk["steer_serve"]["observe"]["probes"][0]["projection"] == [1.0, 2.0, 3.0]


def test_unreported_observation_is_fetched_for_metrics_only() -> None:
    body = b'{"id": "x"}'
    sent, fetched, recorded = _run([_start(b"application/json", len(body)), {"type": "http.response.body", "body": body}],
                                   reported=False)
    assert json.loads(sent[1]["body"]) == {"id": "x"} and fetched == ["oid"] and recorded == [RESULT]


def test_a_client_that_hangs_up_still_frees_the_workers() -> None:
    sent, fetched, _ = _run([_start(b"text/event-stream"), {"type": "http.response.body", "body": b"data: {}\n\n"}])
    assert fetched == ["oid"]  # fetched by finish() in the background
