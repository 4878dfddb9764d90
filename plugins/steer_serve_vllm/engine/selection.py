"""Expert edits for bias-corrected grouped routing (DeepSeek-V3/R1, `topk_method = "noaux_tc"`).

There the router selects on s_e + b_e (s = sigmoid(logit), b = e_score_correction_bias): a
-inf logit only makes s_e = 0, the expert's selection score becomes b_e, and it can still be
chosen (with weight 0) and still pull its group in. So the edit goes into the selection score:
for each token, c_e = s_e + b_e + o_e with o_e = -inf (disabled) / +FORCE_LOGIT (forced) / 0,
then exactly vLLM's grouped top-k (`cpu_router._grouped_topk` in vLLM 0.32):
  group score g = sum of the top-2 c_e in the group; keep the topk_group best groups;
  chosen = top-k of c_e over the kept groups; weight_e = s_e / sum(chosen s) * routed_scaling_factor
(renormalised when the model says so). A disabled expert is never chosen and never counts for
its group; the chosen experts are weighted by their unbiased scores, as the model weights them.

Installed by replacing `_compute_routing` on each such layer's vLLM router instance (recorded in
the ledger); the per-token offsets come from the persistent router-bias table, so the compiled
graph sees new contents without retracing.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from steer_serve_vllm.engine.runtime import SteeringRuntime


def wrap_selection(router: Any, runtime: SteeringRuntime, layer: int, needed: Callable[[str], bool]) -> None:
    original = router._compute_routing
    offsets = runtime.tables.router_bias[layer]  # [R, E]

    def compute_routing(hidden_states: torch.Tensor, router_logits: torch.Tensor, indices_type: Any,
                        *, input_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not needed("routing"):
            return original(hidden_states, router_logits, indices_type, input_ids=input_ids)
        num_tokens, num_experts = router_logits.shape
        offset = offsets[:, :num_experts].index_select(0, runtime.rows(num_tokens))  # [T, E]
        return grouped_topk_with_offset(router_logits, offset, router)

    router._compute_routing = compute_routing


def grouped_topk_with_offset(logits: torch.Tensor, offset: torch.Tensor, router: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's sigmoid + correction-bias grouped top-k with a per-token selection offset."""
    scores = logits.float().sigmoid()  # [T, E], the unbiased weights
    choice = scores + router.e_score_correction_bias.unsqueeze(0) + offset  # [T, E], selection only
    num_tokens, num_experts = choice.shape
    groups = int(router.num_expert_group)
    group_scores = choice.view(num_tokens, groups, -1).topk(2, dim=-1)[0].sum(dim=-1)  # [T, G]
    group_idx = torch.topk(group_scores, k=int(router.topk_group), dim=-1, sorted=False)[1]  # [T, G_kept]
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)  # [T, G]
    score_mask = group_mask.unsqueeze(-1).expand(num_tokens, groups, num_experts // groups).reshape(num_tokens, -1)
    kept = choice.masked_fill(~score_mask.bool(), float("-inf"))  # [T, E]
    topk_ids = torch.topk(kept, k=int(router.top_k), dim=-1, sorted=False)[1]  # [T, k]
    topk_weights = scores.gather(1, topk_ids)  # [T, k]
    if router.renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    if router.routed_scaling_factor != 1.0:
        topk_weights = topk_weights * router.routed_scaling_factor
    return topk_weights, topk_ids.to(torch.int32)
