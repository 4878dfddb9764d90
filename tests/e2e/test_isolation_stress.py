"""Isolation under stress: a seeded random mix of steered and unsteered requests, run
concurrently on an engine whose KV cache is so small that requests are preempted, and whose
token budget is so small that prompts are prefilled in chunks over several steps.

Every request must come out exactly as when it runs alone on the same server (greedy tokens
equal, logprobs within 1e-5); with STEER_SERVE_STRESS_PLAIN=1 unsteered requests are also
compared with plain vLLM under the same flags. Preemption is where position phases could go
wrong: vLLM recomputes a preempted request's prompt *and* the tokens it had already generated
(prefix caching is off here, so the recomputation is complete), and those tokens must still get
the `generated` rows of the steering tables. Chunked prefill is where a prompt's rows must
continue across steps. The solo runs fit the cache alone, so they are never preempted.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS
from harness.completions import agreedy, assert_same_generation, assert_steering_visible, greedy
from harness.metrics import counter_total
from harness.random_workload import Job, random_jobs
from harness.servers import Server

pytestmark = pytest.mark.slow

BLOCK_SIZE = 32
KV_BLOCKS = 12  # 384 tokens of KV cache for ~28 requests of up to 200 tokens each
TOKEN_BUDGET = 64  # --max-num-batched-tokens: prompts longer than this are prefilled in chunks
PROMPT_LEN = (8, 160)
MAX_TOKENS = (4, 40)
NUM_JOBS = 28
BATCH_ATOL = 1e-5
PREEMPTIONS = "vllm:num_preemptions"
# One seed in CI; STEER_SERVE_STRESS_SEEDS="1,2,3" replays others locally.
SEEDS = [int(s) for s in os.environ.get("STEER_SERVE_STRESS_SEEDS", "0").split(",")]
COMPARE_PLAIN = os.environ.get("STEER_SERVE_STRESS_PLAIN") == "1"
STRESS_ARGS = [
    "--max-model-len", "256", "--block-size", str(BLOCK_SIZE), "--num-gpu-blocks-override", str(KV_BLOCKS),
    "--max-num-batched-tokens", str(TOKEN_BUDGET), "--enable-chunked-prefill", "--no-enable-prefix-caching",
]


def _start(request: pytest.FixtureRequest, model: Path, log_dir: Path, plugin: bool) -> Server:
    server = Server(model, log_dir, plugin=plugin, eager=True, extra_args=STRESS_ARGS)
    request.addfinalizer(server.stop)
    return server.wait_ready()


@pytest.fixture(scope="module")
def stress_server(request, tiny_llama_dir, log_dir) -> Server:
    return _start(request, tiny_llama_dir, log_dir, plugin=True)


@pytest.fixture(scope="module")
def plain_stress_server(request, tiny_llama_dir, log_dir) -> Server:
    """Plain vLLM with the same cache and budget; only with STEER_SERVE_STRESS_PLAIN=1 (a second
    start-up costs about a minute on 2 cores; test_isolation.py compares with plain vLLM in CI)."""
    return _start(request, tiny_llama_dir, log_dir, plugin=False)


async def _run_concurrently(server: Server, jobs: list[Job]) -> list:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        return await asyncio.gather(*(agreedy(client, server.model, job.prompt, job.max_tokens, job.steering)
                                      for job in jobs))


def test_server_config_forces_chunked_prefill(stress_server) -> None:
    """vLLM only accepts a token budget below max-model-len when prompts may be split."""
    log = stress_server.log_path.read_text(errors="replace")
    assert f"Chunked prefill is enabled with max_num_batched_tokens={TOKEN_BUDGET}" in log


@pytest.mark.parametrize("seed", SEEDS)
def test_random_mixed_batches_equal_solo_runs(request, stress_server, seed: int) -> None:
    server = stress_server
    plain = request.getfixturevalue("plain_stress_server") if COMPARE_PLAIN else None
    jobs = random_jobs(seed, NUM_JOBS, hidden=TINY_HIDDEN, layers=TINY_LAYERS, heads=2,
                       prompt_len=PROMPT_LEN, max_tokens=MAX_TOKENS)
    chunked = sum(len(job.prompt) > TOKEN_BUDGET for job in jobs)
    assert chunked >= NUM_JOBS // 4, "too few prompts longer than the token budget"

    before = counter_total(server.client, PREEMPTIONS)
    batched = asyncio.run(_run_concurrently(server, jobs))
    preempted = counter_total(server.client, PREEMPTIONS) - before
    assert preempted > 0, "the KV cache should be too small for this batch"

    for index, (job, output) in enumerate(zip(jobs, batched)):
        try:
            _check_job(server, plain, job, output)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed} job {index}: {job.describe()}: {exc}") from exc
    assert counter_total(server.client, PREEMPTIONS) - before == preempted, "solo runs must not be preempted"
    print(f"seed {seed}: {len(jobs)} jobs, {preempted:.0f} preemptions, {chunked} chunked prompts, "
          f"plain vLLM compared: {plain is not None}")


def _check_job(server: Server, plain: Server | None, job: Job, output) -> None:
    """Batched == solo; a steered solo differs from the unsteered one (the case is not vacuous)."""
    solo = greedy(server.client, server.model, job.prompt, job.max_tokens, job.steering)
    assert_same_generation(output, solo, atol=BATCH_ATOL)
    if job.steering is not None:
        assert_steering_visible(solo, greedy(server.client, server.model, job.prompt, job.max_tokens))
    elif plain is not None:
        assert_same_generation(output, greedy(plain.client, plain.model, job.prompt, job.max_tokens), atol=BATCH_ATOL)


def test_conditional_steering_reads_the_whole_chunked_prompt(stress_server, tiny_reference) -> None:
    """CAST `when` with prompts prefilled in 3 chunks: the condition's mean accumulates across the
    chunks and is decided at the last prompt token, as the HF reference decides on the whole prompt
    (gated edit on generated tokens, so the prompt's own KV does not depend on the chunking)."""
    import numpy as np
    import torch

    from harness.cast_cases import gated_steering, reference_edit, threshold_between
    from harness.hf_reference import Condition
    from harness.steering_cases import random_vector

    rng = np.random.default_rng(5)
    prompts = [[1, *rng.integers(100, 20000, 150).tolist()], [1, *([4110, 2113, 9097, 30] * 36)]]
    cond = random_vector(TINY_HIDDEN, 51)
    edit = {"type": "add", "vector": random_vector(TINY_HIDDEN, 52).tolist(), "layers": [2], "scale": 4.0,
            "positions": "generated"}
    condition = Condition(1, torch.from_numpy(cond), 0.0)
    threshold = threshold_between(tiny_reference, prompts, condition)
    condition = Condition(1, torch.from_numpy(cond), threshold)
    steering = gated_steering(cond, 1, threshold, [edit])

    async def batch() -> list:
        async with httpx.AsyncClient(base_url=stress_server.url, timeout=300) as client:
            return await asyncio.gather(*(agreedy(client, stress_server.model, p, 6, steering) for p in prompts))

    decisions = []
    for prompt, served in zip(prompts, asyncio.run(batch())):
        assert len(prompt) > 2 * TOKEN_BUDGET
        expected = tiny_reference.greedy(prompt, 6, [], condition, [reference_edit(edit)])
        decisions.append(tiny_reference.condition_met)
        assert_same_generation(served, expected)
        if decisions[-1]:
            assert_steering_visible(expected, tiny_reference.greedy(prompt, 6))
    assert sorted(decisions) == [False, True]
