"""Prefix caching never mixes steered and unsteered KV blocks.

A long prompt is cached by one kind of request, then served to the other kind; the second
must still equal the HF reference. The cache-hit counter shows the cache was really in play.
"""

from __future__ import annotations

import pytest

from support.completions import assert_same_generation, greedy
from support.metrics import counter_total
from support.steering_cases import Entry, random_vector

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
