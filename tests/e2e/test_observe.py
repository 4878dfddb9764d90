"""Observing the residual stream through the server equals HF `output_hidden_states` (float32).

Probe projections/cosines and captured vectors are checked against the tiny HF model at the
same layer and positions, in a mixed batch (an observed request, a steered and observed one whose
probe must see its own edit, an unobserved one), on the shared eager server and on one compiled
server with chunked prefill (a 32-token step budget splits every prompt) and server probes on
/metrics. Also: streaming equals non-streaming, an aborted request leaves nothing in the workers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import numpy as np
import pytest
import torch

from harness.hf_reference import Addition
from harness.servers import ADMIN_KEY, Server
from harness.steering_cases import random_vector, tiny_library_directions
from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS

pytestmark = pytest.mark.slow

LIBRARY = tiny_library_directions(TINY_HIDDEN, TINY_LAYERS)  # `tiny_a` of the shared vector dir
INLINE = random_vector(TINY_HIDDEN, 21)
STEER = {"interventions": [{"type": "add", "vector": "tiny_a", "layers": [1], "scale": 4.0}]}
PROMPTS = [[int(t) for t in np.random.default_rng(seed).integers(3, 5000, n)] for seed, n in ((1, 45), (2, 70), (3, 20))]
MAX_TOKENS = 6
ATOL = 1e-4


@pytest.fixture(scope="module")
def observe_server(request, tiny_llama_dir, tiny_vector_dir, log_dir, tmp_path_factory) -> Server:
    """Compiled, chunked prefill (32 tokens per step), a server probe `gloom` (tiny_a at layer 2), admin key."""
    probes = tmp_path_factory.mktemp("probes") / "probes.yaml"
    probes.write_text("- {name: gloom, vector: tiny_a, layer: 2}\n")
    server = Server(tiny_llama_dir, log_dir, vector_dir=tiny_vector_dir, eager=False,
                    extra_args=["--probes", str(probes), "--max-num-batched-tokens", "32", "--admin-key", ADMIN_KEY])
    request.addfinalizer(server.stop)
    return server.wait_ready()


def _observed() -> dict:
    return {"probes": [{"name": "inline", "vector": INLINE.tolist(), "layer": 1, "cosine": True},
                       {"name": "lib", "vector": "tiny_a", "layer": 2}],
            "capture": {"layers": [0, 2], "positions": "all"}}


def _steered_observed() -> dict:
    return {"probes": [{"name": "seen", "vector": "tiny_a", "layer": 1}], "capture": {"layers": [1], "positions": "last"}}


def _body(model: str, prompt: list[int], **extra) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True,
            "logprobs": 1, "return_tokens_as_token_ids": True, **extra}


def _tokens(choice: dict) -> list[int]:
    return [int(t.removeprefix("token_id:")) for t in choice["logprobs"]["tokens"]]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _captured(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["data"]), "<f4").reshape(entry["shape"])


def _check(observed: dict, hidden: torch.Tensor, prompt: list[int], probes: dict[str, tuple[int, np.ndarray]],
           capture_positions: list[int]) -> None:
    """hidden: HF [L+1, n, D] over prompt + generated[:-1]; probes: name -> (layer, direction)."""
    n = hidden.shape[1]
    assert observed["num_prompt_tokens"] == len(prompt) and observed["positions"] == list(range(n))
    by_name = {p["name"]: p for p in observed["probes"]}
    assert set(by_name) == set(probes)
    for name, (layer, direction) in probes.items():
        h = hidden[layer + 1].numpy()  # [n, D]
        expected = h @ _unit(direction)
        np.testing.assert_allclose(by_name[name]["projection"], expected, atol=ATOL, rtol=1e-5)
        if "cosine" in by_name[name]:
            np.testing.assert_allclose(by_name[name]["cosine"], expected / np.linalg.norm(h, axis=-1), atol=ATOL)
    for entry in observed.get("capture", []):
        assert entry["positions"] == capture_positions and not entry["truncated"]
        np.testing.assert_allclose(_captured(entry), hidden[entry["layer"] + 1, capture_positions].numpy(), atol=ATOL)


async def _mixed_batch(server: Server) -> list[dict]:
    bodies = [_body(server.model, PROMPTS[0], observe=_observed()),
              _body(server.model, PROMPTS[1], steering=STEER, observe=_steered_observed()),
              _body(server.model, PROMPTS[2])]
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        responses = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


@pytest.mark.parametrize("server_fixture", ["tiny_eager_server", "observe_server"])
def test_mixed_batch_observation_equals_hf_hidden_states(request, server_fixture, tiny_reference) -> None:
    server = request.getfixturevalue(server_fixture)
    observed, steered, plain = asyncio.run(_mixed_batch(server))
    tokens = PROMPTS[0] + _tokens(observed["choices"][0])[:-1]
    _check(observed["steer_serve"]["observe"], tiny_reference.hidden_states(tokens), PROMPTS[0],
           {"inline": (1, INLINE), "lib": (2, LIBRARY[2])}, list(range(len(tokens))))

    edit = [Addition(1, torch.from_numpy(4.0 * LIBRARY[1]))]
    tokens = PROMPTS[1] + _tokens(steered["choices"][0])[:-1]
    hidden = tiny_reference.hidden_states(tokens, edit)
    _check(steered["steer_serve"]["observe"], hidden, PROMPTS[1], {"seen": (1, LIBRARY[1])}, [len(PROMPTS[1]) - 1])
    unedited = tiny_reference.hidden_states(tokens)[2].numpy() @ _unit(LIBRARY[1])
    assert np.abs(np.array(steered["steer_serve"]["observe"]["probes"][0]["projection"]) - unedited).min() > 1.0

    assert "steer_serve" not in plain  # nothing asked, nothing added (the server probe is /metrics only)


def _stream(server: Server, body: dict) -> list[dict]:
    chunks = []
    with server.client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    return chunks


def test_streaming_and_non_streaming_observe_the_same(tiny_eager_server) -> None:
    body = _body(tiny_eager_server.model, PROMPTS[2], observe=_observed())
    whole = tiny_eager_server.client.post("/v1/completions", json=body).json()["steer_serve"]["observe"]
    chunks = _stream(tiny_eager_server, body)
    last = chunks[-1]
    assert last["choices"] == [] and last["id"] == chunks[0]["id"]
    assert all("steer_serve" not in c for c in chunks[:-1])
    streamed = last["steer_serve"]["observe"]
    assert streamed["positions"] == whole["positions"] and streamed["num_prompt_tokens"] == whole["num_prompt_tokens"]
    for a, b in zip(streamed["probes"], whole["probes"]):
        assert a["name"] == b["name"]
        np.testing.assert_allclose(a["projection"], b["projection"], atol=1e-5)
    for a, b in zip(streamed["capture"], whole["capture"]):
        np.testing.assert_allclose(_captured(a), _captured(b), atol=1e-5)


def _engine_stats(server: Server) -> list[dict]:
    response = server.client.get("/v1/steering/engine", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()["workers"]


def test_aborted_observed_request_leaves_nothing_in_the_workers(observe_server) -> None:
    observe = {"probes": _observed()["probes"], "capture": {"layers": [0], "positions": "last"}}
    body = _body(observe_server.model, PROMPTS[1], observe=observe, stream=True, max_tokens=400)
    with observe_server.client.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # generating: then hang up
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = _engine_stats(observe_server)
        if all(w["observed_requests"] == 0 and w["held_observations"] == 0 for w in workers):
            break
        time.sleep(0.5)
    assert all(w["observed_requests"] == 0 and w["held_observations"] == 0 for w in workers), workers
    # the pooled stores (--observe-memory, default 64 MiB) have their rows back
    assert all(w["probe_positions_in_use"] == 0 and w["capture_vectors_in_use"] == 0 for w in workers), workers
    assert all(w["probe_positions"] == 2**25 // 64 and w["capture_vectors"] == 2**25 // (4 * TINY_HIDDEN)
               for w in workers), workers
    assert observe_server.is_alive()


def _probe_buckets(server: Server) -> dict[float, float]:
    """Cumulative bucket counts of the `gloom` histogram outside experiments (prometheus_client leaves
    `_sum` out of a histogram with negative buckets, so the buckets are what a dashboard reads)."""
    buckets = {}
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith("steer_serve:probe_mean_projection_bucket{") and 'probe="gloom"' in line \
                and 'arm="none"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def test_server_probe_mean_projection_reaches_metrics(observe_server, tiny_reference) -> None:
    before = _probe_buckets(observe_server)
    prompt = [77, 88, 99] + PROMPTS[2][3:]  # no prefix seen before: every token is computed
    response = observe_server.client.post("/v1/completions", json=_body(observe_server.model, prompt))
    assert response.status_code == 200 and "steer_serve" not in response.json()
    tokens = prompt + _tokens(response.json()["choices"][0])[:-1]
    expected = float((tiny_reference.hidden_states(tokens)[3].numpy() @ _unit(LIBRARY[2])).mean())
    after = _probe_buckets(observe_server)
    assert all(abs(expected - le) > ATOL for le in after)  # the bucket is decided by more than rounding
    assert {le: after[le] - before.get(le, 0.0) for le in after} == {le: float(expected <= le) for le in after}


def test_bad_observe_is_a_400_naming_the_field(tiny_eager_server) -> None:
    cases = [({"probes": [{"name": "p", "vector": "nope", "layer": 1}]}, "observe.probes[0].vector"),
             ({"probes": [{"name": "p", "vector": "tiny_a", "layer": TINY_LAYERS}]}, "observe.probes[0].layer"),
             ({"capture": {"layers": [0], "positions": "first"}}, "observe"),
             ({"capture": {"layers": [0, 1], "positions": list(range(200))}}, "observe.capture")]
    for observe, param in cases:
        response = tiny_eager_server.client.post("/v1/completions",
                                                 json=_body(tiny_eager_server.model, PROMPTS[2], observe=observe))
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert tiny_eager_server.is_alive()
