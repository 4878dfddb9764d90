"""Faults on real servers: clients that hang up, more distinct interventions than slots, a dead
engine, preemption of observed requests, and a short soak. The engine stats route
(`GET /v1/steering/engine`) is the witness that slots are released.

One module server (tiny Llama, eager, 4 slots, 16 KV blocks, admin key) serves every test; engine
death runs last and kills it.
"""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import numpy as np
import psutil
import pytest

from loadtests import soak
from steer_serve.engine_stats import EngineSteeringStats
from steer_serve_vllm.api.engine_death import ENGINE_DIED_EXIT_CODE
from harness.completions import agreedy, assert_same_generation, completion_body, greedy, parse_generation
from harness.metrics import counter_total
from harness.servers import Server
from harness.steering_cases import random_vector
from harness.tiny_models import TINY_HIDDEN

pytestmark = pytest.mark.slow

KEY = "fault-admin-key"
SLOTS = 4  # --max-num-seqs: vLLM's scheduler runs at most 4 requests at once
STEERING_SLOTS = 2  # --steering-slots: at most 2 configurations resident; steered requests beyond wait
BATCH_ATOL = 1e-5  # batch composition changes float32 rounding on CPU; tokens must match exactly
IDLE_TIMEOUT_S = 15.0
# 16 KV blocks of 128 tokens (vLLM CPU's block size; one block is vLLM's null block): 1920 usable
# tokens, enough for any one request (max-model-len 1024) and for the other tests' short ones, too
# few for four 700-token requests at once, so the preemption test forces vLLM to preempt.
KV_BLOCKS = 16


@pytest.fixture(scope="module")
def fault_server(tiny_llama_dir, log_dir) -> Server:
    args = ["--admin-key", KEY, "--max-num-seqs", str(SLOTS), "--steering-slots", str(STEERING_SLOTS),
            "--num-gpu-blocks-override", str(KV_BLOCKS)]
    server = Server(tiny_llama_dir, log_dir, eager=True, extra_args=args)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _stats(server: Server) -> EngineSteeringStats:
    response = server.client.get("/v1/steering/engine", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    return EngineSteeringStats.model_validate(response.json())


def _wait_idle(server: Server, timeout: float = IDLE_TIMEOUT_S) -> EngineSteeringStats:
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(server)
        if (stats.live_requests, stats.live_configurations) == (0, 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def _steering(seed: int, scale: float = 4.0) -> dict:
    return {"interventions": [{"type": "add", "vector": random_vector(128, seed).tolist(), "layers": [1, 2],
                               "scale": scale}]}


PROMPT = [1, 400, 401, 402, 403, 404, 405]


def test_engine_route_is_admin_only_and_reports_capacity(fault_server) -> None:
    assert fault_server.client.get("/v1/steering/engine").status_code == 401
    wrong = fault_server.client.get("/v1/steering/engine", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    stats = _stats(fault_server)
    assert [w.rank for w in stats.workers] == [0]
    worker = stats.workers[0]
    assert worker.slot_capacity == STEERING_SLOTS
    assert worker.pool_bytes == (worker.vector_capacity + 1) * 128 * 4  # the float32 vector pool [P, D]
    assert worker.vector_capacity >= 4 * 10 and worker.table_bytes > worker.pool_bytes  # >= one worst configuration


def test_client_disconnect_mid_stream_frees_its_slot(fault_server) -> None:
    """A streaming steered request whose client hangs up is aborted and releases its slot; a
    later request with another vector reuses the slot and is still exact."""
    hung_up, follow_up = _steering(11), _steering(12)
    solo = greedy(fault_server.client, fault_server.model, PROMPT, 8, follow_up)
    generated_before = counter_total(fault_server.client, "vllm:generation_tokens")
    long = 1000 - len(PROMPT)
    body = completion_body(fault_server.model, PROMPT, long, hung_up) | {"stream": True}
    with httpx.Client(base_url=fault_server.url, timeout=60) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            chunks = [next(lines) for _ in range(6)]
            during = _stats(fault_server)
    assert any(c.startswith("data: ") for c in chunks)
    assert (during.live_requests, during.live_configurations, during.workers[0].resident_slots) == (1, 1, 1)
    hung_up_at = time.monotonic()
    after = _wait_idle(fault_server)
    assert (after.live_requests, after.live_configurations, after.workers[0].resident_slots) == (0, 0, 0)
    assert time.monotonic() - hung_up_at < IDLE_TIMEOUT_S
    generated = counter_total(fault_server.client, "vllm:generation_tokens") - generated_before
    assert 0 < generated < long // 2, "the request must have been aborted, not run to its end"
    assert_same_generation(greedy(fault_server.client, fault_server.model, PROMPT, 8, follow_up), solo, atol=0.0)


async def _concurrently(url: str, model: str, jobs: list[tuple[list[int], dict]]) -> list:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(agreedy(client, model, prompt, 8, steering) for prompt, steering in jobs))


def test_more_distinct_interventions_than_slots_queue_and_stay_exact(fault_server) -> None:
    """16 concurrent requests with 16 distinct vectors, 4 sequences but 2 steering slots: all succeed
    (agreedy asserts 200) and each equals its solo run, so the scheduler's steering admission held the
    excess back (without it the worker could not place a third configuration) instead of borrowing."""
    jobs = [([1] + [600 + 13 * i + k for k in range(10)], _steering(100 + i)) for i in range(16)]
    solos = [greedy(fault_server.client, fault_server.model, prompt, 8, steering) for prompt, steering in jobs]
    unsteered = [greedy(fault_server.client, fault_server.model, prompt, 8) for prompt, _ in jobs[:4]]
    assert any(s.tokens != u.tokens for s, u in zip(solos, unsteered)), "vectors too weak to show a mix-up"
    together = asyncio.run(_concurrently(fault_server.url, fault_server.model, jobs))
    for got, solo in zip(together, solos):
        assert_same_generation(got, solo, atol=BATCH_ATOL)
    assert (_wait_idle(fault_server).live_configurations) == 0


def test_soak_smoke(fault_server, tmp_path) -> None:
    """Twenty seconds of the soak's mixed traffic (with hang-ups): the same pass criteria as the 10-minute run."""
    target = soak.Target(fault_server.url, fault_server.model, fault_server.process.pid, KEY)
    report = asyncio.run(soak.soak(target, duration_s=25, concurrency=16, sample_s=5, warmup_s=10))
    soak.write_report(report, tmp_path)
    assert soak.passed(report), report["criteria"]
    assert set(report["by_kind"]) == set(soak.KINDS) and report["disconnects"] > 0
    assert report["statuses"].get("200", 0) > 20
    assert (tmp_path / "soak.png").stat().st_size > 0 and "PASS" in (tmp_path / "report.md").read_text()


PREEMPT_PROMPT, PREEMPT_GENERATED = 300, 400  # 4 x 700 tokens > 1920 resident
PROBES = {"a": (0, random_vector(TINY_HIDDEN, 31)), "b": (2, random_vector(TINY_HIDDEN, 32))}
CAPTURED_LAYERS, CAPTURED_POSITIONS = [1, 2], [0, PREEMPT_PROMPT - 1, 450, PREEMPT_PROMPT + PREEMPT_GENERATED - 2]


async def _observed_long(url: str, body: dict, count: int) -> list[dict]:
    prompts = [[int(t) for t in np.random.default_rng(40 + i).integers(3, 5000, PREEMPT_PROMPT)] for i in range(count)]
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        responses = await asyncio.gather(*(client.post("/v1/completions", json=dict(body, prompt=p)) for p in prompts))
    assert all(r.status_code == 200 for r in responses), [r.text[:300] for r in responses]
    return [dict(r.json(), prompt=p) for r, p in zip(responses, prompts)]


def test_observation_equals_hf_under_preemption(fault_server, tiny_reference) -> None:
    """Four observed 700-token requests on 1920 resident KV tokens: vLLM preempts (its own counter
    says so) and recomputes; every request's probe values (all positions) and captured vectors still
    equal HF `output_hidden_states` after layer L (float32, 1e-4)."""
    observe = {"probes": [{"name": name, "vector": v.tolist(), "layer": layer} for name, (layer, v) in PROBES.items()],
               "capture": {"layers": CAPTURED_LAYERS, "positions": CAPTURED_POSITIONS}}
    body = completion_body(fault_server.model, [], PREEMPT_GENERATED) | {"observe": observe}
    preempted_before = counter_total(fault_server.client, "vllm:num_preemptions")
    answers = asyncio.run(_observed_long(fault_server.url, body, SLOTS))
    assert counter_total(fault_server.client, "vllm:num_preemptions") > preempted_before
    for answer in answers:
        tokens = answer["prompt"] + parse_generation(answer).tokens[:-1]
        hidden = tiny_reference.hidden_states(tokens).numpy()  # [L+1, n, D]; entry L+1 = after decoder layer L
        observed = answer["steer_serve"]["observe"]
        assert observed["positions"] == list(range(len(tokens))) == list(range(PREEMPT_PROMPT + PREEMPT_GENERATED - 1))
        for probe in observed["probes"]:
            layer, vector = PROBES[probe["name"]]
            expected = hidden[layer + 1] @ (vector / np.linalg.norm(vector))
            np.testing.assert_allclose(probe["projection"], expected, atol=1e-4, rtol=1e-5)
        for entry in observed["capture"]:
            assert entry["positions"] == CAPTURED_POSITIONS and not entry["truncated"]
            captured = np.frombuffer(base64.b64decode(entry["data"]), "<f4").reshape(entry["shape"])
            np.testing.assert_allclose(captured, hidden[entry["layer"] + 1, CAPTURED_POSITIONS], atol=1e-4)
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while any(w.observed_requests or w.held_observations for w in _stats(fault_server).workers):
        assert time.monotonic() < deadline, "observation lanes still held after every response ended"
        time.sleep(0.2)


def _engine_core(server: Server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return next(c for c in children if "EngineCore" in c.name() or "EngineCore" in " ".join(c.cmdline()))


def test_engine_death_fails_health_and_exits_nonzero(fault_server) -> None:
    """vLLM stops the API server when EngineCore dies, but with status 0; steer-serve exits non-zero
    so that systemd Restart=on-failure / Docker --restart on-failure bring it back. Runs last in
    this module: it kills the module server's engine (a normal stop exiting 0 is checked by
    test_library_admin.py's restart)."""
    server = fault_server
    children = psutil.Process(server.process.pid).children(recursive=True)
    _engine_core(server).kill()
    deadline = time.monotonic() + 30
    health = 200
    while health == 200 and time.monotonic() < deadline:
        try:
            health = server.client.get("/health", timeout=2).status_code
        except httpx.HTTPError:
            health = -1  # connection refused: the API server is already gone
        time.sleep(0.2)
    assert health != 200
    assert server.process.wait(timeout=60) == ENGINE_DIED_EXIT_CODE, server.log_tail()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"engine processes outlived the server: {alive}"
