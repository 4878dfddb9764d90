"""The DeepSeek-V3 selection edit against vLLM's own grouped top-k and HF's DeepSeek-V3 router."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from vllm.model_executor.layers.fused_moe.router.cpu_router import _grouped_topk

from steer_serve_vllm.engine.selection import grouped_topk_with_offset

E, T = 8, 64
BIAS = torch.tensor([0.02, -0.03, 0.05, 0.0, 0.01, 0.6, -0.02, 0.04])  # expert 5 strongly favoured


@pytest.fixture
def routers() -> tuple[SimpleNamespace, DeepseekV3TopkRouter]:
    torch.manual_seed(0)
    config = DeepseekV3Config(hidden_size=16, n_routed_experts=E, num_experts_per_tok=2, n_group=2, topk_group=1,
                              routed_scaling_factor=2.5, norm_topk_prob=True)
    hf = DeepseekV3TopkRouter(config)
    hf.weight.data.normal_(0, 0.5)
    hf.e_score_correction_bias.copy_(BIAS)
    vllm_like = SimpleNamespace(e_score_correction_bias=BIAS, num_expert_group=2, topk_group=1, top_k=2,
                                renormalize=True, routed_scaling_factor=2.5)
    return vllm_like, hf


def _sorted(weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.argsort(dim=-1)
    return weights.gather(1, order), ids.long().gather(1, order)


def test_zero_offset_is_vllms_own_routing(routers) -> None:
    router, _ = routers
    logits = torch.randn(T, E)
    ours = _sorted(*grouped_topk_with_offset(logits, torch.zeros(T, E), router))
    theirs = _sorted(*_grouped_topk(logits, 2, True, 2, 1, "sigmoid", 2.5, BIAS))
    assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("offset_value, expert", [(float("-inf"), 5), (100.0, 1)])
def test_edit_equals_hf_router_with_edited_bias(routers, offset_value: float, expert: int) -> None:
    router, hf = routers
    x = torch.randn(T, 16)
    logits = x @ hf.weight.T
    offset = torch.zeros(T, E)
    offset[:, expert] = offset_value
    weights, ids = _sorted(*grouped_topk_with_offset(logits, offset, router))
    hf.e_score_correction_bias.copy_(BIAS + offset[0])
    _, hf_weights, hf_ids = hf(x)
    hf_weights, hf_ids = _sorted(hf_weights, hf_ids)
    assert torch.equal(ids, hf_ids)
    torch.testing.assert_close(weights, hf_weights, atol=1e-6, rtol=1e-6)
    selected = (ids == expert).any(dim=-1)
    assert bool(selected.all()) if offset_value > 0 else not bool(selected.any())


def test_a_minus_inf_logit_does_not_switch_a_favoured_expert_off(routers) -> None:
    """Why the edit is in the selection score: masking the logit leaves expert 5 selectable."""
    router, _ = routers
    logits = torch.randn(T, E)
    logits[:, 5] = float("-inf")
    _, ids = _grouped_topk(logits, 2, True, 2, 1, "sigmoid", 2.5, BIAS)
    assert bool((ids == 5).any())


def test_relied_upon_router_attributes_exist_in_vllm() -> None:
    """engine/adapters/routing.py and selection.py read these off vLLM's CPURouter (ledger)."""
    from vllm.model_executor.layers.fused_moe.router.cpu_router import CPURouter

    router = CPURouter(top_k=2, global_num_experts=E, use_grouped_topk=True, num_expert_group=2, topk_group=1,
                       renormalize=True, scoring_func="sigmoid", routed_scaling_factor=2.5,
                       e_score_correction_bias=BIAS)
    for name in ("use_grouped_topk", "scoring_func", "e_score_correction_bias", "custom_routing_function",
                 "num_expert_group", "topk_group", "top_k", "global_num_experts", "renormalize",
                 "routed_scaling_factor", "_compute_routing"):
        assert hasattr(router, name), name
    logits = torch.randn(T, E)
    ours = _sorted(*grouped_topk_with_offset(logits, torch.zeros(T, E), router))
    theirs = _sorted(*router._compute_routing(None, logits, None))
    assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[0], theirs[0])
