"""Steered vLLM output equals the HF model steered by forward hooks (float32, greedy).

Checked for the tiny random Llama in eager and compiled (torch.compile) mode, and for the
default model SmolLM2-135M-Instruct, over several layers, scales, position modes and
multi-vector specs. Every case also differs from the unsteered output, so a server that
ignored steering would fail.
"""

from __future__ import annotations

import pytest

from harness.completions import assert_same_generation, assert_steering_visible, greedy
from harness.tiny_models import TINY_HIDDEN, TINY_LAYERS
from harness.steering_cases import Case, Entry, random_vector, tiny_cases, tiny_library_directions

pytestmark = pytest.mark.slow

PROMPT = [1, 504, 3458, 314, 260, 1345, 28, 357, 4110, 2113, 9097, 30, 339, 1001, 5521, 4461]
MAX_TOKENS = 12


def _tiny_case_list() -> list[Case]:
    return tiny_cases(TINY_HIDDEN, tiny_library_directions(TINY_HIDDEN, TINY_LAYERS))


@pytest.mark.parametrize("server_fixture", ["tiny_eager_server", "tiny_compiled_server"])
@pytest.mark.parametrize("case", _tiny_case_list(), ids=lambda case: case.id)
def test_tiny_llama_matches_hf_hooks(request, server_fixture: str, case: Case, tiny_reference) -> None:
    server = request.getfixturevalue(server_fixture)
    expected = tiny_reference.greedy(PROMPT, MAX_TOKENS, case.additions())
    unsteered = tiny_reference.greedy(PROMPT, MAX_TOKENS)
    assert_steering_visible(expected, unsteered)

    actual = greedy(server.client, server.model, PROMPT, MAX_TOKENS, case.steering())
    assert_same_generation(actual, expected)


def _smollm2_cases() -> list[Case]:
    v = random_vector(576, 11)
    return [
        Case("layer10", (Entry(v, {10: 0.6}),)),
        Case("layers-3-20-generated", (Entry(v, {3: 0.5, 20: -0.8}, "generated", per_layer_scale=True),)),
        Case("two-vectors", (Entry(v, {8: 0.5}, "prompt"), Entry(random_vector(576, 12), {8: 0.4, 15: 0.4}))),
    ]


@pytest.mark.parametrize("case", _smollm2_cases(), ids=lambda case: case.id)
def test_smollm2_matches_hf_hooks(case: Case, smollm2_server, smollm2_reference) -> None:
    expected = smollm2_reference.greedy(PROMPT, MAX_TOKENS, case.additions())
    unsteered = smollm2_reference.greedy(PROMPT, MAX_TOKENS)
    assert_steering_visible(expected, unsteered)

    actual = greedy(smollm2_server.client, smollm2_server.model, PROMPT, MAX_TOKENS, case.steering())
    assert_same_generation(actual, expected)


def test_unsteered_tiny_llama_matches_hf(tiny_eager_server, tiny_reference) -> None:
    expected = tiny_reference.greedy(PROMPT, MAX_TOKENS)
    assert_same_generation(greedy(tiny_eager_server.client, tiny_eager_server.model, PROMPT, MAX_TOKENS), expected)
