"""Conditional steering (CAST `when`) on the shared tiny servers, eager and compiled: two prompts on
either side of the threshold, in one concurrent batch with an unsteered request, are steered or not
exactly as the HF reference (IBM's formula, hooks) decides: tokens equal, logprobs within 1e-4.
The request whose condition is not met equals the server's unsteered output. The per-token gate
(compare "token") equals the reference gating each token by its own hidden state."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from harness.cast_cases import gated_steering, reference_edit, threshold_between
from harness.completions import agreedy, assert_same_generation, assert_steering_visible
from harness.hf_reference import Condition
from harness.steering_cases import random_vector
from harness.tiny_models import TINY_HIDDEN

pytestmark = pytest.mark.slow

PROMPTS = [[1, 504, 3458, 314, 260, 1345, 28, 357, 4110, 2113, 9097, 30], [1, 2010, 41, 8812, 6354, 17, 3301, 2206]]
OTHER = [1, 9, 77, 1203, 5, 630]
MAX_TOKENS = 8
COND = random_vector(TINY_HIDDEN, 41)


def _add(layer: int, seed: int, scale: float, **extra) -> dict:
    return {"type": "add", "vector": random_vector(TINY_HIDDEN, seed).tolist(), "layers": [layer], "scale": scale, **extra}


CASES = {
    # mean over the prompt, met above; gated edits at the condition layer itself and after it
    "mean-above": dict(layer=1, above=True, compare="mean", gated=[_add(1, 42, 3.0), _add(3, 43, 3.0)], plain=[]),
    # last token, met below; an unconditional edit before the condition layer (which sees it), a gated
    # addition before the condition layer (prompt untouched there, as in IBM) and a gated ablation after it
    "last-below-mixed": dict(layer=2, above=False, compare="last", plain=[_add(0, 44, 2.0)],
                             gated=[_add(1, 45, 3.0), {"type": "ablate", "vector": random_vector(TINY_HIDDEN, 46).tolist(),
                                                       "layers": [3]}]),
}


async def _batch(server, steerings: list[dict]) -> list:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        return await asyncio.gather(*(agreedy(client, server.model, p, MAX_TOKENS, s)
                                      for p, s in zip(PROMPTS, steerings)),
                                    agreedy(client, server.model, OTHER, MAX_TOKENS))


@pytest.mark.parametrize("server_fixture", ["tiny_eager_server", "tiny_compiled_server"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_prompts_either_side_of_the_threshold(request, tiny_reference, server_fixture, case) -> None:
    server = request.getfixturevalue(server_fixture)
    c = CASES[case]
    plain = [reference_edit(e) for e in c["plain"]]
    gated = [reference_edit(e) for e in c["gated"]]
    condition = Condition(c["layer"], torch.from_numpy(COND), 0.0, c["above"], c["compare"])
    threshold = threshold_between(tiny_reference, PROMPTS, condition, plain)
    condition = Condition(c["layer"], torch.from_numpy(COND), threshold, c["above"], c["compare"])
    steering = gated_steering(COND, c["layer"], threshold, c["gated"], c["plain"], c["above"], c["compare"])

    *served, other = asyncio.run(_batch(server, [steering, steering]))
    decisions = []
    for prompt, generation in zip(PROMPTS, served):
        expected = tiny_reference.greedy(prompt, MAX_TOKENS, plain, condition, gated)
        decisions.append(tiny_reference.condition_met)
        assert_same_generation(generation, expected)
        if tiny_reference.condition_met:
            assert_steering_visible(expected, tiny_reference.greedy(prompt, MAX_TOKENS, plain))
    assert sorted(decisions) == [False, True]
    assert_same_generation(other, tiny_reference.greedy(OTHER, MAX_TOKENS))
    if not plain:  # not met and nothing unconditional: the server's own unsteered output
        unmet = decisions.index(False)
        assert_same_generation(served[unmet], asyncio.run(_batch(server, [None, None]))[unmet])


@pytest.mark.parametrize("server_fixture", ["tiny_eager_server", "tiny_compiled_server"])
def test_per_token_gate_steers_exactly_the_tokens_that_pass(request, tiny_reference, server_fixture) -> None:
    """A threshold between the prompt tokens' own similarities: some tokens (prompt and generated) are
    edited and some not, exactly as the reference decides token by token."""
    server = request.getfixturevalue(server_fixture)
    layer, gated = 1, [_add(1, 47, 3.0), _add(3, 48, 3.0)]
    probe = Condition(layer, torch.from_numpy(COND), 0.0, True, "token")
    sims = sorted(float(s) for p in PROMPTS for s in probe.token_similarities(tiny_reference.hidden_states(p)[layer + 1]))
    threshold = _midpoint_of_a_clear_gap(sims)
    condition = Condition(layer, torch.from_numpy(COND), threshold, True, "token")
    steering = gated_steering(COND, layer, threshold, gated, compare="token")
    edits = [reference_edit(e) for e in gated]

    *served, other = asyncio.run(_batch(server, [steering, steering]))
    verdicts = []
    for prompt, generation in zip(PROMPTS, served):
        expected = tiny_reference.greedy(prompt, MAX_TOKENS, [], condition, edits)
        verdicts += tiny_reference.token_verdicts
        assert_same_generation(generation, expected)
        assert_steering_visible(expected, tiny_reference.greedy(prompt, MAX_TOKENS))  # some tokens steered
        assert_steering_visible(expected, tiny_reference.greedy(prompt, MAX_TOKENS, edits))  # not all of them
    assert set(verdicts) == {True, False}
    assert_same_generation(other, tiny_reference.greedy(OTHER, MAX_TOKENS))


def _midpoint_of_a_clear_gap(values: list[float], min_gap: float = 2e-3) -> float:
    """A threshold near the median that no value sits within min_gap / 2 of (float32 vs float64 noise
    must not flip a token; the BOS token has the same similarity in every prompt)."""
    gaps = [(abs(i - len(values) / 2), (a + b) / 2) for i, (a, b) in enumerate(zip(values, values[1:]), 1)
            if b - a >= min_gap]
    return min(gaps)[1]
