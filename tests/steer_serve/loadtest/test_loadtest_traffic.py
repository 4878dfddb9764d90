"""The traffic plan: seeded, shares by weight, steering bodies as configured, K distinct vectors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from scipy.stats import chisquare

from steer_serve.loadtest.scenario import parse_scenario
from steer_serve.loadtest.traffic import draw_lengths, plan_requests, read_prompt_file

SCENARIO = parse_scenario({
    "model": "m", "prompts": {"input_tokens": {"dist": "uniform", "min": 4, "max": 12},
                              "output_tokens": {"dist": "normal", "mean": 8, "std": 3, "min": 2, "max": 12}},
    "traffic": [{"name": "plain", "weight": 2},
                {"name": "named", "weight": 1, "steering": {"interventions": [{"type": "add", "vector": "v", "scale": 2}]}},
                {"name": "random", "weight": 1, "random_vectors": {"count": 3, "layers": [1, 2], "scale": 0.5, "dim": 8}},
                {"name": "ab", "weight": 1, "users": {"pool": 5}}],
    "arrival": {"concurrency": 4}, "requests": 500, "seed": 3})


def plan(seed=3, n=500):
    return plan_requests(SCENARIO, n, seed, "run", vocab_size=1000, dim=8, file_prompts=None)


def test_plan_is_seeded_and_fresh_per_seed() -> None:
    assert plan() == plan()
    assert [r.prompt for r in plan(4)] != [r.prompt for r in plan()]


def test_shares_follow_weights() -> None:
    counts = Counter(r.traffic_class for r in plan())
    observed = [counts[n] for n in ("plain", "named", "random", "ab")]
    assert sum(observed) == 500
    assert chisquare(observed, [200, 100, 100, 100]).pvalue > 0.001


def test_bodies_per_class() -> None:
    requests = plan()
    for r in requests:
        assert len(r.prompt) == r.prompt_len and 4 <= r.prompt_len <= 12 and 2 <= r.output_len <= 12
        assert all(100 <= t < 900 for t in r.prompt)
        if r.traffic_class == "plain":
            assert r.overrides is None
        if r.traffic_class == "named":
            assert r.overrides == {"steering": SCENARIO.traffic[1].steering}
        if r.traffic_class == "ab":
            assert set(r.overrides) == {"user"} and r.overrides["user"] in {f"user-{i}" for i in range(5)}
    vectors = [json.dumps(r.overrides["steering"]["interventions"][0]["vector"]) for r in requests
               if r.traffic_class == "random"]
    assert len(set(vectors)) == 3 and vectors[:3] == vectors[3:6]  # round-robin over K distinct
    first = np.array(json.loads(vectors[0]))
    assert abs(np.linalg.norm(first) - 1) < 1e-4


def test_lengths() -> None:
    rng = np.random.default_rng(0)
    assert draw_lengths(7, 3, rng) == [7, 7, 7]
    normal = SCENARIO.prompts.output_tokens
    values = draw_lengths(normal, 1000, rng)
    assert min(values) >= 2 and max(values) <= 12 and 7 < np.mean(values) < 9


def test_prompt_file(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello there"}\n\n{"prompt": "hi"}\n')
    prompts = read_prompt_file(path, lambda p: len(p.split()))
    assert [p.tokens for p in prompts] == [2, 1]
    path.write_text('{"prompt": "a"}\n{"messages": [{"role": "user", "content": "b"}]}\n')
    try:
        read_prompt_file(path, len)
    except ValueError as exc:
        assert "one kind" in str(exc)
    else:
        raise AssertionError("mixed file accepted")
