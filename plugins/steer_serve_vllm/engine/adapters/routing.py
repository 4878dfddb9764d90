"""How an MoE layer routes, read off vLLM's own router object (not guessed from the config).

vLLM 0.32 builds one `MoERunner` per MoE layer (`FusedMoEFactory`), holding a router object
(`runner.router`: `CPURouter` on CPU) with `use_grouped_topk`, `scoring_func`,
`e_score_correction_bias`, `custom_routing_function`, `top_k`, `global_num_experts`.
Those attributes decide the routing kind; an unknown combination is refused with its reason.
"""

from __future__ import annotations

from torch import nn

from steer_serve_vllm.engine.adapters.base import RouterSite


def find_moe_runner(mlp: nn.Module | None) -> nn.Module | None:
    """The MoERunner inside a layer's MLP (the module holding vLLM's router object), if any."""
    if mlp is None:
        return None
    for module in mlp.modules():
        if type(module).__name__.endswith("MoERunner") and hasattr(module, "router"):
            return module
    return None


def router_site(runner: nn.Module, logits: nn.Module | None) -> tuple[RouterSite | None, str | None]:
    """(site, None) when the engine can disable/force experts here, else (None, why not)."""
    router = runner.router
    experts, top_k = int(router.global_num_experts), int(router.top_k)
    grouped = bool(getattr(router, "use_grouped_topk", False))
    scoring = getattr(router, "scoring_func", "softmax")
    bias = getattr(router, "e_score_correction_bias", None)
    if getattr(runner, "_fse_fuse_gate", False):
        return None, "the router logits come from a GEMM fused with the shared-expert gate, which the engine does not hook"
    if getattr(router, "custom_routing_function", None) is not None:
        return None, "the model routes with a custom routing function the engine does not edit"
    if not grouped and scoring == "softmax" and bias is None:
        return _needs_logits(RouterSite("softmax_topk", experts, top_k, logits=logits))
    groups = dict(groups=int(router.num_expert_group or 1), groups_selected=int(router.topk_group or 1)) if grouped else {}
    if grouped and scoring == "softmax" and bias is None:
        return _needs_logits(RouterSite("grouped_softmax_topk", experts, top_k, logits=logits, **groups))
    if grouped and scoring == "sigmoid" and bias is not None:
        if type(router).__name__ != "CPURouter":
            return None, (f"bias-corrected grouped routing is intercepted only in vLLM's CPURouter "
                          f"(this engine uses {type(router).__name__})")
        return RouterSite("sigmoid_bias_grouped_topk", experts, top_k, selector=router, **groups), None
    return None, f"routing with scoring {scoring!r}, grouped={grouped}, correction bias={bias is not None} is not supported"


def _needs_logits(site: RouterSite) -> tuple[RouterSite | None, str | None]:
    if site.logits is None:
        return None, "no router linear (GateLinear) found whose output the engine can edit"
    return site, None
