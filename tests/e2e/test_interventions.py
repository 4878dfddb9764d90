"""Every intervention type on every supported architecture equals the HF reference.

Dense: Llama, Qwen2. MoE: Mixtral, Qwen2-MoE, OLMoE (tiny random configs, head_dim 64).
Each case runs in one concurrent batch with an unsteered request, which must stay equal to
the unedited HF model. One server per (architecture, mode), started once and alive only while its cases run.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from harness.tiny_models import TINY_HIDDEN, build_tiny_model
from harness.completions import agreedy, assert_same_generation, assert_steering_visible
from harness.intervention_cases import ablate, add, clamp, combine, experts, heads
from harness.one_at_a_time import OneAtATime
from harness.servers import Server
from harness.steering_cases import random_vector

pytestmark = pytest.mark.slow

PROMPT = [1, 504, 3458, 314, 260, 1345, 28, 357, 4110, 2113, 9097, 30]
OTHER_PROMPT = [1, 2010, 41, 8812, 6354, 17, 3301, 2206]
MAX_TOKENS = 10
HEADS = 2
MAX_DOSE = 0.5
DOSE = "dose-clipped"  # only on a server started with the dose guardrail
DENSE = ["llama", "qwen2"]
MOE = ["mixtral", "qwen2_moe", "olmoe"]

V1, V2, V3 = (random_vector(TINY_HIDDEN, seed) for seed in (21, 22, 23))


def dense_cases() -> dict[str, tuple[dict, list]]:
    return {
        "ablate": combine(ablate(V1, [1, 2])),
        "clamp-generated": combine(clamp(V2, [0], 3.0, "generated")),
        "two-projections-one-layer": combine(ablate(V1, [1]), clamp(V2, [1], -2.0, "prompt")),
        "heads-mask-and-scale": combine(heads(HEADS, {0: [1]}, {2: {0: 2.5}})),
        "heads-prompt-only": combine(heads(HEADS, {1: [0]}, {}, "prompt")),
        "add+ablate+heads": combine(add(V3, [1], 0.4), ablate(V3, [1]), heads(HEADS, {3: [1]}, {}), add(V1, [2], 0.3)),
    }


def moe_cases() -> dict[str, tuple[dict, list]]:
    return dense_cases() | {
        "experts-disable": combine(experts({0: [0, 1], 2: [3]}, {})),
        "experts-force": combine(experts({}, {1: [2]})),
        "experts-generated": combine(experts({3: [1]}, {0: [3]}, "generated")),
        "add+ablate+experts+heads": combine(
            add(V1, [0], 0.4), ablate(V2, [2]), experts({1: [0]}, {2: [1]}), heads(HEADS, {0: [0]}, {})
        ),
    }


# Every case on every architecture in eager mode; the combined cases again compiled and at TP=2.
MODES = {
    "eager": dict(eager=True),
    "compiled": dict(eager=False),
    "tp2": dict(eager=True, extra_args=["--tensor-parallel-size", "2"], env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}),
    "dose": dict(eager=True, env={"STEER_SERVE_MAX_DOSE": str(MAX_DOSE)}),
    # the same limit from a steering policy: per request, a row of the steering tables (eager and compiled)
    "policy-dose": dict(eager=True),
    "policy-dose-compiled": dict(eager=False),
}
DOSE_POLICY = f"default: {{max_dose: {MAX_DOSE}}}\n"
COMPILED_AND_TP_CASES = ("add+ablate+heads", "add+ablate+experts+heads", "heads-mask-and-scale", "experts-force")


def _cases_for(kind: str) -> dict:
    cases = moe_cases() if kind in MOE else dense_cases()
    return cases | {DOSE: combine(add(V1, [1, 2], 0.4, max_dose=MAX_DOSE))}


def test_dose_case_is_really_clipped(tiny_reference) -> None:
    """Guard for the dose case: the clipped reference differs from the unclipped one."""
    _, clipped = combine(add(V1, [1, 2], 0.4, max_dose=MAX_DOSE))
    _, unclipped = combine(add(V1, [1, 2], 0.4))
    assert tiny_reference.greedy(PROMPT, MAX_TOKENS, clipped).logprobs != tiny_reference.greedy(
        PROMPT, MAX_TOKENS, unclipped).logprobs


def _matrix() -> list[tuple[str, str]]:
    runs = [((kind, "eager"), case) for kind in DENSE + MOE for case in sorted(_cases_for(kind)) if case != DOSE]
    for kind in ("llama", "mixtral"):
        for mode in ("compiled", "tp2"):
            runs += [((kind, mode), case) for case in COMPILED_AND_TP_CASES if case in _cases_for(kind)]
    return runs + [(("llama", mode), DOSE) for mode in ("dose", "policy-dose", "policy-dose-compiled")]


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory, smollm2_dir):
    return {kind: build_tiny_model(kind, tmp_path_factory.mktemp(kind), smollm2_dir) for kind in DENSE + MOE}


@pytest.fixture(scope="module")
def servers(arch_dirs, log_dir, tmp_path_factory) -> OneAtATime:
    """A server (and HF reference) per (architecture, mode), started once: the matrix is grouped."""
    from harness.hf_reference import HFReference

    policy = tmp_path_factory.mktemp("policy") / "dose.yaml"
    policy.write_text(DOSE_POLICY)

    def start(key: tuple[str, str]) -> tuple[str, Server, HFReference]:
        kind, mode = key
        options = dict(MODES[mode])
        if mode.startswith("policy"):
            options["extra_args"] = ["--policy", str(policy)]
        return kind, Server(arch_dirs[kind], log_dir, **options).wait_ready(), HFReference(arch_dirs[kind])

    pool = OneAtATime(start, lambda value: value[1].stop())
    yield pool
    pool.close()


async def _batch(server: Server, steering: dict) -> list:
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        jobs = [agreedy(client, server.model, PROMPT, MAX_TOKENS, steering),
                agreedy(client, server.model, OTHER_PROMPT, MAX_TOKENS)]
        return await asyncio.gather(*jobs)


@pytest.mark.parametrize("arch, case", _matrix(), ids=lambda v: "-".join(v) if isinstance(v, tuple) else v)
def test_intervention_matches_hf_in_mixed_batch(servers, arch: tuple[str, str], case: str) -> None:
    kind, server, reference = servers.get(arch)
    steering, edits = _cases_for(kind)[case]
    expected = reference.greedy(PROMPT, MAX_TOKENS, edits)
    assert_steering_visible(expected, reference.greedy(PROMPT, MAX_TOKENS))

    steered, unsteered = asyncio.run(_batch(server, steering))
    assert_same_generation(steered, expected)
    assert_same_generation(unsteered, reference.greedy(OTHER_PROMPT, MAX_TOKENS))


@pytest.mark.parametrize("steering, fragment", [
    ({"interventions": [{"type": "experts", "disable": {"0": [9]}}]}, "expert 9 does not exist in layer 0"),
    ({"interventions": [{"type": "experts", "disable": {"7": [0]}}]}, "layer 7 has no experts"),
    ({"interventions": [{"type": "experts", "disable": {"0": [0]}, "force": {"0": [0]}}]}, "both disabled and forced"),
    ({"interventions": [{"type": "experts", "force": {"0": [0, 1, 2]}}]}, "3 experts forced"),
    ({"interventions": [{"type": "experts", "disable": {"0": [0, 1, 2]}}]}, "only 1 experts left enabled"),
    ({"interventions": [{"type": "experts"}]}, "give `disable` and/or `force`"),
    ({"interventions": [{"type": "heads", "mask": {"0": [2]}}]}, "head 2 does not exist"),
    ({"interventions": [{"type": "heads", "mask": {"9": [0]}}]}, "layer 9 is out of range"),
    ({"interventions": [{"type": "heads", "scale": {"0": {"x": 1.0}}}]}, "is not a head number"),
    ({"interventions": [{"type": "ablate", "vector": [0.0] * TINY_HIDDEN, "layers": [0]}]}, "zero norm"),
    ({"interventions": [{"type": "clamp", "vector": V1.tolist(), "layers": [0]}]}, "value"),
    ({"interventions": [{"type": "ablate", "vector": V1.tolist(), "layers": [0]}] * 3}, "at most 2 per layer"),
])
def test_invalid_new_types_are_400(servers, steering: dict, fragment: str) -> None:
    _, server, _ = servers.get(("mixtral", "eager"))
    body = {"model": server.model, "prompt": "Hi", "max_tokens": 2, "steering": steering}
    response = server.client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]
    assert server.client.post("/v1/completions", json=body | {"steering": None}).status_code == 200


def test_experts_on_a_dense_model_is_400(tiny_eager_server) -> None:
    body = {"model": tiny_eager_server.model, "prompt": "Hi", "max_tokens": 2,
            "steering": {"interventions": [{"type": "experts", "disable": {"0": [0]}}]}}
    response = tiny_eager_server.client.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert "no Mixture-of-Experts layers" in response.json()["error"]["message"]
