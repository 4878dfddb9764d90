"""Pipeline parallel (PP=2) and data parallel (DP=2) on CPU keep equivalence and isolation.

The tiny Llama (4 layers, 2 per pipeline stage) serves a batch of concurrent requests: two with
different steering (edits on both stages: layer 1 on stage 0, layer 2 on stage 1) and two without;
each must equal the HF reference with the same edits (the unsteered ones: the unedited model).
Under DP the requests are spread over two engines; PP runs compiled (see MODES). The engine stats route reports every rank
(PP: both stages; DP: both engines) and no state is left behind. One server per mode, one at a time.
Observation (probes and capture) on a layer of each pipeline stage equals HF output_hidden_states:
every stage answers for the layers it owns and the API merges them.
"""

from __future__ import annotations

import asyncio

import base64

import httpx
import numpy as np
import pytest

from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS
from harness.completions import agreedy, assert_same_generation, assert_steering_visible
from harness.intervention_cases import ablate, add, clamp, combine, heads
from harness.servers import Server
from harness.steering_cases import random_vector
from steer_serve.engine_stats import EngineSteeringStats

pytestmark = pytest.mark.slow

KEY = "parallel-admin"
BIND = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}  # one core per rank, as for TP (tests/e2e/test_interventions.py)
# PP runs compiled: with --enforce-eager, vLLM 0.32 CPU crashes on the first request of a pipeline
# (`assert self.intermediate_tensors is not None`, gpu_model_runner.py:3174), because
# CPUModelRunner.warming_up_model skips the dummy run that allocates them on later stages.
MODES = {
    "pp2": dict(eager=False, extra_args=["--pipeline-parallel-size", "2", "--admin-key", KEY], env=BIND),
    "dp2": dict(eager=True, extra_args=["--data-parallel-size", "2", "--admin-key", KEY], env=BIND),
}
EXPECTED_RANKS = {"pp2": [(0, 0, 0), (0, 1, 1)], "dp2": [(0, 0, 0), (1, 0, 0)]}  # (dp_rank, rank, pp_rank)
PROMPTS = [[1, 504, 3458, 314, 260, 1345, 28, 357], [1, 2010, 41, 8812, 6354, 17, 3301, 2206],
           [1, 400, 401, 402, 403, 404], [1, 77, 78, 79, 80, 81, 82, 83, 84]]
MAX_TOKENS = 8
V1, V2, V3 = (random_vector(TINY_HIDDEN, seed) for seed in (31, 32, 33))
OBSERVED_LAYERS = (1, 2)  # PP=2 on 4 layers: layer 1 on stage 0, layer 2 on stage 1
STEERED = {
    0: combine(add(V1, [1, 2], 0.4), ablate(V2, [2]), heads(2, {0: [1]}, {3: {0: 2.0}})),
    2: combine(add(V3, [0, 3], -0.3, "generated"), clamp(V1, [1], 2.0, "prompt")),
}


@pytest.fixture(scope="module", params=sorted(MODES))
def server(request, tiny_llama_dir, tiny_vector_dir, log_dir):
    """pytest groups the tests by this fixture's parameter: each mode's server starts once."""
    started = Server(tiny_llama_dir, log_dir, vector_dir=tiny_vector_dir, **MODES[request.param])
    started.mode = request.param
    request.addfinalizer(started.stop)
    return started.wait_ready()


async def _batch(server: Server) -> list:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        jobs = [agreedy(client, server.model, prompt, MAX_TOKENS, STEERED[i][0] if i in STEERED else None)
                for i, prompt in enumerate(PROMPTS)]
        return await asyncio.gather(*jobs)


def _stats(server: Server) -> EngineSteeringStats:
    response = server.client.get("/v1/steering/engine", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    return EngineSteeringStats.model_validate(response.json())


def test_mixed_batch_matches_hf(server, tiny_reference) -> None:
    expected = [tiny_reference.greedy(prompt, MAX_TOKENS, STEERED[i][1] if i in STEERED else ())
                for i, prompt in enumerate(PROMPTS)]
    for i in STEERED:
        assert_steering_visible(expected[i], tiny_reference.greedy(PROMPTS[i], MAX_TOKENS))
    for _ in range(2):  # twice: the second round reuses (or reloads) slots
        for actual, wanted in zip(asyncio.run(_batch(server)), expected):
            assert_same_generation(actual, wanted)


def test_engine_route_reports_every_rank(server) -> None:
    stats = _stats(server)
    assert [(w.dp_rank, w.rank, w.pp_rank) for w in stats.workers] == EXPECTED_RANKS[server.mode]
    assert (stats.live_requests, stats.live_configurations) == (0, 0)
    assert all(w.slot_capacity == 32 and w.table_bytes > 0 for w in stats.workers)


def test_observation_on_both_stages_equals_hf(server, tiny_reference) -> None:
    assert TINY_LAYERS == 4
    probes = [{"name": f"p{layer}", "vector": v.tolist(), "layer": layer, "cosine": True}
              for layer, v in zip(OBSERVED_LAYERS, (V1, V2))]
    body = {"model": server.model, "prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "logprobs": 1, "return_tokens_as_token_ids": True,
            "observe": {"probes": probes, "capture": {"layers": list(OBSERVED_LAYERS), "positions": "all"}}}
    response = server.client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    generated = [int(t.removeprefix("token_id:")) for t in response.json()["choices"][0]["logprobs"]["tokens"]]
    tokens = PROMPTS[1] + generated[:-1]
    hidden = tiny_reference.hidden_states(tokens).numpy()  # [L+1, n, D]
    observed = response.json()["steer_serve"]["observe"]
    assert observed["positions"] == list(range(len(tokens)))
    for probe, layer, v in zip(observed["probes"], OBSERVED_LAYERS, (V1, V2)):
        h = hidden[layer + 1]  # [n, D]
        expected = h @ (v / np.linalg.norm(v))
        np.testing.assert_allclose(probe["projection"], expected, atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(probe["cosine"], expected / np.linalg.norm(h, axis=-1), atol=1e-4)
    for entry, layer in zip(observed["capture"], OBSERVED_LAYERS):
        assert entry["layer"] == layer and entry["positions"] == list(range(len(tokens)))
        vectors = np.frombuffer(base64.b64decode(entry["data"]), "<f4").reshape(entry["shape"])
        np.testing.assert_allclose(vectors, hidden[layer + 1], atol=1e-4)
    stats = _stats(server)
    assert sum(w.observed_requests + w.held_observations for w in stats.workers) == 0
