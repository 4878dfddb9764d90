"""SAE feature interventions on a real server equal the HF reference, eager and compiled.

`strength` adds W_dec[i] (SAELens's decoder row); `clamp` sets the feature to a value, with the
feature's activation computed in the reference by SAELens's own `encode` on the HF layer output
(TopK included: both servers hold the tiny TopK SAE's full encoder, `--topk-clamp-saes tk`).
Each case runs in one concurrent batch with an unsteered request that must equal unedited HF.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch

from harness.tiny_models import TINY_HIDDEN
from harness.completions import agreedy, assert_same_generation, assert_steering_visible
from harness.hf_reference import Addition, FeatureClamp, Projection
from harness.saes import saelens_model
from harness.servers import TINY_EAGER_PROJECTIONS
from harness.steering_cases import random_vector

pytestmark = pytest.mark.slow
import sae_lens  # noqa: E402,F401  (a test dependency: its absence must fail, not skip)

PROMPT = [1, 504, 3458, 314, 260, 1345, 28, 357, 4110, 2113, 9097, 30]
OTHER_PROMPT = [1, 2010, 41, 8812, 6354, 17, 3301, 2206]
MAX_TOKENS = 8
V = random_vector(TINY_HIDDEN, 31)
TK_OTHER = 12  # a second TopK feature clamped to 0 (active or not: the served result must equal the reference)


@pytest.fixture(scope="module")
def reference_saes(tiny_saes, tmp_path_factory) -> dict:
    scratch = tmp_path_factory.mktemp("saelens")
    return {name: saelens_model(sae, scratch) for name, sae in tiny_saes.items() if name != "other_model"}


def _row(tiny_saes, name: str, feature: int, normalize: bool = False) -> torch.Tensor:
    row = torch.from_numpy(tiny_saes[name].weights["W_dec"][feature].copy())
    return row / row.norm() if normalize else row


def _clamp(tiny_saes, reference_saes, name: str, feature: int, value: float, positions: str = "all") -> FeatureClamp:
    model = reference_saes[name]

    def activation(h: torch.Tensor) -> torch.Tensor:
        return model.encode(h)[..., feature]

    return FeatureClamp(tiny_saes[name].layer, activation, _row(tiny_saes, name, feature), value,
                        rescale=tiny_saes[name].normalize != "none", positions=positions)


def cases(tiny_saes, reference_saes) -> dict[str, tuple[dict, list]]:
    unit = torch.from_numpy(V / np.linalg.norm(V)).float()
    clamp = lambda *a, **k: _clamp(tiny_saes, reference_saes, *a, **k)  # noqa: E731
    return {
        "add-jumprelu": ([{"type": "feature", "sae": "jr", "feature": 3, "strength": 4.0}],
                         [Addition(1, 4.0 * _row(tiny_saes, "jr", 3))]),
        "add-topk-normalised": ([{"type": "feature", "sae": "tk", "feature": 7, "strength": -3.0, "normalize": True}],
                                [Addition(2, -3.0 * _row(tiny_saes, "tk", 7, normalize=True))]),
        "clamp-jumprelu": ([{"type": "feature", "sae": "jr", "feature": 5, "clamp": 6.0}], [clamp("jr", 5, 6.0)]),
        "clamp-standard-off-generated": (
            [{"type": "feature", "sae": "std", "feature": 11, "clamp": 0.0, "positions": "generated"},
             {"type": "feature", "sae": "std", "feature": 12, "clamp": 5.0, "positions": "prompt"}],
            [clamp("std", 11, 0.0, "generated"), clamp("std", 12, 5.0, "prompt")]),
        "clamp-topk": ([{"type": "feature", "sae": "tk", "feature": 7, "clamp": 6.0},
                        {"type": "feature", "sae": "tk", "feature": TK_OTHER, "clamp": 0.0}],
                       [clamp("tk", 7, 6.0), clamp("tk", TK_OTHER, 0.0)]),
        "clamp-rescaled": ([{"type": "feature", "sae": "rescaled", "feature": 2, "clamp": 8.0}],
                           [clamp("rescaled", 2, 8.0)]),
        "clamp+add+ablate-one-layer": (
            [{"type": "add", "vector": V.tolist(), "layers": [1], "scale": 0.5},
             {"type": "feature", "sae": "jr", "feature": 9, "clamp": 4.0},
             {"type": "ablate", "vector": V.tolist(), "layers": [1]}],
            [Addition(1, 0.5 * torch.from_numpy(V)), clamp("jr", 9, 4.0), Projection(1, unit)]),
    }


async def _batch(server, steering: dict) -> list:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        return await asyncio.gather(agreedy(client, server.model, PROMPT, MAX_TOKENS, steering),
                                    agreedy(client, server.model, OTHER_PROMPT, MAX_TOKENS))


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_features_match_hf_with_saelens_encoder(request, mode, tiny_saes, reference_saes, tiny_reference) -> None:
    server = request.getfixturevalue("tiny_eager_server" if mode == "eager" else "tiny_compiled_server")
    unsteered = tiny_reference.greedy(PROMPT, MAX_TOKENS)
    other = tiny_reference.greedy(OTHER_PROMPT, MAX_TOKENS)
    for name, (interventions, edits) in cases(tiny_saes, reference_saes).items():
        expected = tiny_reference.greedy(PROMPT, MAX_TOKENS, edits)
        assert_steering_visible(expected, unsteered), name
        steered, plain = asyncio.run(_batch(server, {"interventions": interventions}))
        assert_same_generation(steered, expected), name
        assert_same_generation(plain, other)


@pytest.mark.parametrize("steering, param, fragment", [
    ({"type": "feature", "sae": "nope", "feature": 1, "strength": 1.0}, "sae", "unknown SAE 'nope'"),
    ({"type": "feature", "sae": "jr", "feature": 256, "strength": 1.0}, "feature", "feature 256 does not exist"),
    ({"type": "feature", "sae": "other_model", "feature": 1, "strength": 1.0}, "sae", "does not match the model's hidden size 128"),
    ({"type": "feature", "sae": "jr", "feature": 1}, "", "exactly one of `strength`"),
    ({"type": "feature", "sae": "jr", "feature": 1, "clamp": 1.0, "normalize": True}, "", "`normalize` applies"),
    ({"type": "feature", "sae": "jr", "feature": -1, "strength": 1.0}, "", "greater than or equal to 0"),
    ({"type": "feature", "sae": "jr", "feature": 1, "strength": 1e9}, "strength", "exceeds the limit"),
])
def test_bad_feature_requests_are_400_naming_the_field(tiny_eager_server, steering, param, fragment) -> None:
    body = {"model": tiny_eager_server.model, "prompt": "Hi", "max_tokens": 2,
            "steering": {"interventions": [steering]}}
    response = tiny_eager_server.client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["param"].startswith("steering") and error["param"].endswith(param)
    assert tiny_eager_server.client.post("/v1/completions", json=body | {"steering": None}).status_code == 200


def test_sae_library_lists_usable_saes_and_says_why_others_are_not(tiny_eager_server) -> None:
    listing = tiny_eager_server.client.get("/v1/steering/saes").json()
    found = {entry["name"]: entry for entry in listing["data"]}
    assert {name: (e["layer"], e["d_sae"], e["architecture"]) for name, e in found.items()} == {
        "jr": (1, 256, "jumprelu"), "std": (2, 256, "standard"), "tk": (2, 256, "topk"), "rescaled": (3, 256, "jumprelu")}
    assert "d_in 64 does not match" in listing["unusable"]["other_model"]


def test_eight_clamped_features_on_one_layer_match_hf(tiny_eager_server, tiny_saes, reference_saes, tiny_reference) -> None:
    """--steering-projections 8 (the shared eager server): 8 clamps at one layer, applied in request
    order, equal the HF reference with SAELens's encoder; a 9th is a 400 naming the setting."""
    features = [(3 + 5 * i, float(i)) for i in range(TINY_EAGER_PROJECTIONS)]  # (feature, clamp value)
    interventions = [{"type": "feature", "sae": "jr", "feature": f, "clamp": c} for f, c in features]
    edits = [_clamp(tiny_saes, reference_saes, "jr", f, c) for f, c in features]
    expected = tiny_reference.greedy(PROMPT, MAX_TOKENS, edits)
    assert_steering_visible(expected, tiny_reference.greedy(PROMPT, MAX_TOKENS))
    steered, plain = asyncio.run(_batch(tiny_eager_server, {"interventions": interventions}))
    assert_same_generation(steered, expected)
    assert_same_generation(plain, tiny_reference.greedy(OTHER_PROMPT, MAX_TOKENS))
    ninth = interventions + [{"type": "feature", "sae": "jr", "feature": 200, "clamp": 1.0}]
    body = {"model": tiny_eager_server.model, "prompt": "Hi", "max_tokens": 2, "steering": {"interventions": ninth}}
    response = tiny_eager_server.client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert f"at most {TINY_EAGER_PROJECTIONS} per layer on this server (--steering-projections)" in response.json()["error"]["message"]
