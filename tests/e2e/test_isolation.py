"""Requests with different steering (and none) share batches without affecting each other.

Twelve requests run concurrently on one engine: eight with distinct vectors and four without.
Every unsteered output must equal plain vLLM (no plugin loaded) and every steered output must
equal the same request run alone. Batch composition can change float32 rounding on CPU, so
logprobs are compared to 1e-5 and tokens exactly.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from harness.completions import agreedy, assert_same_generation, greedy
from harness.steering_cases import random_vector

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
BATCH_ATOL = 1e-5


def _prompt(i: int) -> list[int]:
    return [1] + [500 + 37 * i + k for k in range(12 + i)]


def _steering(i: int) -> dict:
    vector = random_vector(128, 100 + i).tolist()
    positions = ("all", "prompt", "generated")[i % 3]
    return {"interventions": [{"type": "add", "vector": vector, "layers": [i % 4], "scale": 0.3, "positions": positions}]}


JOBS = [(_prompt(i), _steering(i)) for i in range(8)] + [(_prompt(8 + i), None) for i in range(4)]


async def _run_concurrently(url: str, model: str, jobs) -> list:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(agreedy(client, model, prompt, MAX_TOKENS, steering) for prompt, steering in jobs))


def test_mixed_batch_matches_solo_and_plain_vllm(tiny_eager_server, tiny_plain_server) -> None:
    server = tiny_eager_server
    batched = asyncio.run(_run_concurrently(server.url, server.model, JOBS))

    for (prompt, steering), output in zip(JOBS, batched):
        if steering is None:
            reference = greedy(tiny_plain_server.client, tiny_plain_server.model, prompt, MAX_TOKENS)
        else:
            reference = greedy(server.client, server.model, prompt, MAX_TOKENS, steering)
        assert_same_generation(output, reference, atol=BATCH_ATOL)

    steered = [output.tokens for (_, steering), output in zip(JOBS, batched) if steering is not None]
    assert len({tuple(tokens) for tokens in steered}) == len(steered), "distinct vectors should give distinct outputs"


def test_unsteered_batch_equals_plain_vllm_batch(tiny_eager_server, tiny_plain_server) -> None:
    """The plugin loaded but unused changes nothing, batch for batch."""
    jobs = [(_prompt(i), None) for i in range(8)]
    ours = asyncio.run(_run_concurrently(tiny_eager_server.url, tiny_eager_server.model, jobs))
    plain = asyncio.run(_run_concurrently(tiny_plain_server.url, tiny_plain_server.model, jobs))
    for mine, theirs in zip(ours, plain):
        assert_same_generation(mine, theirs, atol=BATCH_ATOL)
