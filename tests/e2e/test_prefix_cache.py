"""Prefix caching never mixes steered and unsteered KV blocks.

A long prompt is cached by one kind of request, then served to the other kind; the second
must still equal the HF reference. The cache-hit counter shows the cache was really in play.
A next turn whose prompt continues a steered request's output must not reuse that output's
KV when the steering treats prompt and generated tokens differently.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.completions import assert_same_generation, greedy
from harness.metrics import counter_total
from harness.steering_cases import Entry, random_vector

pytestmark = pytest.mark.slow

MAX_TOKENS = 8
HITS = "vllm:prefix_cache_hits"
STEER = Entry(random_vector(128, 42), {1: 0.3})


def _long_prompt(offset: int) -> list[int]:
    return [1] + [(1000 + offset + 7 * k) % 49000 for k in range(400)]


def _steering() -> dict:
    return {"interventions": [STEER.to_spec()]}


def test_steered_after_unsteered_same_prompt(tiny_eager_server, tiny_reference) -> None:
    server, prompt = tiny_eager_server, _long_prompt(0)
    greedy(server.client, server.model, prompt, MAX_TOKENS)
    before = counter_total(server.client, HITS)
    greedy(server.client, server.model, prompt, MAX_TOKENS)
    assert counter_total(server.client, HITS) > before, "the unsteered repeat should hit the prefix cache"

    steered = greedy(server.client, server.model, prompt, MAX_TOKENS, _steering())
    assert_same_generation(steered, tiny_reference.greedy(prompt, MAX_TOKENS, STEER.to_additions()))


def test_unsteered_after_steered_same_prompt(tiny_eager_server, tiny_reference) -> None:
    server, prompt = tiny_eager_server, _long_prompt(5000)
    greedy(server.client, server.model, prompt, MAX_TOKENS, _steering())
    before = counter_total(server.client, HITS)
    again = greedy(server.client, server.model, prompt, MAX_TOKENS, _steering())
    assert counter_total(server.client, HITS) > before, "the steered repeat should hit its own cached prefix"
    assert_same_generation(again, tiny_reference.greedy(prompt, MAX_TOKENS, STEER.to_additions()))

    unsteered = greedy(server.client, server.model, prompt, MAX_TOKENS)
    assert_same_generation(unsteered, tiny_reference.greedy(prompt, MAX_TOKENS))


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_next_turn_does_not_reuse_kv_of_generated_tokens(tiny_eager_server, tiny_reference, positions) -> None:
    """Turn 1 generates past a cache-block boundary (128 tokens on CPU); turn 2's prompt is turn 1's
    prompt plus 10 of its generated tokens. With the same prompt-only (or generated-only) steering,
    those 10 tokens were edited as generated tokens in turn 1 but are prompt tokens in turn 2.
    Before the salt pinned the prompt, turn 2 reused them from the cache (|dlogprob| ~1e-2)."""
    server = tiny_eager_server
    entry = Entry(random_vector(128, 43), {1: 0.5}, positions)
    steering = {"interventions": [entry.to_spec()]}
    turn = [1] + np.random.default_rng(3).integers(3, 49000, size=249).tolist()
    first = greedy(server.client, server.model, turn, 20, steering)
    next_turn = turn + first.tokens[:10]
    second = greedy(server.client, server.model, next_turn, MAX_TOKENS, steering)
    assert_same_generation(second, tiny_reference.greedy(next_turn, MAX_TOKENS, entry.to_additions()))
