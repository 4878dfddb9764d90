"""What the engine says it can apply, layer by layer (the capability handshake).

Each worker reports, after installing its hooks, which edits each decoder layer takes; the API
process merges the ranks' reports and validates every request, preset and experiment arm
against the result instead of guessing from the HF config. Kept in the domain package (no vLLM)
so that the resolver and its tests can use it directly.

Routing kinds (how the model picks experts; see the README's "Expert routing" section):
- `softmax_topk`: top-k of softmax(router logits) (Mixtral, Qwen2/3-MoE, OLMoE) or top-k of the
  logits then softmax (gpt-oss, whose router has a bias); edited on the router logits.
- `grouped_softmax_topk`: softmax, best groups by their top score, then top-k (DeepSeek-V2).
- `sigmoid_bias_grouped_topk`: selection on sigmoid(logit) + e_score_correction_bias within the
  best groups, weights = unbiased sigmoid scores renormalised x routed_scaling_factor
  (DeepSeek-V3/R1); edited in the selection score itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import DEFAULT_PROJECTIONS_PER_LAYER

RoutingKind = Literal["softmax_topk", "grouped_softmax_topk", "sigmoid_bias_grouped_topk"]


class LayerCapability(BaseModel):
    """One decoder layer on one rank. A kind of edit the layer cannot take carries its reason."""

    model_config = ConfigDict(extra="forbid")

    layer: NonNegativeInt
    owned: bool = True  # False: this rank's pipeline stage does not run the layer (another stage reports it)
    residual: bool  # add / ablate / clamp on the layer output
    residual_refused: str | None = None
    heads: NonNegativeInt = 0  # attention heads this rank scales (0: head edits refused)
    first_head: NonNegativeInt = 0  # global index of this rank's first head
    heads_refused: str | None = None
    experts: NonNegativeInt = 0  # routed experts the engine can disable/force here (0: refused)
    top_k: NonNegativeInt = 0
    routing: RoutingKind | None = None
    expert_groups: NonNegativeInt = 0  # grouped kinds: groups of experts, and how many a token uses
    groups_selected: NonNegativeInt = 0
    experts_refused: str | None = None  # why a layer with a router (or none) takes no expert edits


class WorkerCapabilities(BaseModel):
    """One worker (tensor-parallel rank): what its hooks can apply."""

    model_config = ConfigDict(extra="forbid")

    rank: NonNegativeInt
    architecture: str  # the adapter family that placed the hooks
    hidden_size: NonNegativeInt
    layers: list[LayerCapability]
    projections_per_layer: NonNegativeInt = DEFAULT_PROJECTIONS_PER_LAYER  # K of its tables
    topk_encoders: dict[str, str] = {}  # TopK SAEs whose full encoder it holds (--topk-clamp-saes): name -> content sha256


def merge(model_id: str, workers: list[WorkerCapabilities]) -> ModelShape:
    """The engine-wide shape: a layer takes an edit only if every rank applies it; heads add up."""
    if not workers:
        raise RuntimeError("steer-serve: no engine worker reported its steering capabilities")
    first = workers[0]
    # under pipeline parallelism a layer runs on one stage: only the ranks that own it decide
    by_layer = [[w.layers[i] for w in workers if w.layers[i].owned] or [w.layers[i] for w in workers]
                for i in range(len(first.layers))]
    refused: dict[str, dict[int, str]] = {"residual": {}, "heads": {}, "experts": {}}
    experts: dict[int, int] = {}
    routing: dict[int, str] = {}
    groups: dict[int, tuple[int, int]] = {}
    top_k = 0
    head_counts = set()
    for ranks in by_layer:
        layer = ranks[0].layer
        if not all(r.residual for r in ranks):
            refused["residual"][layer] = _reason(ranks, "residual_refused", "the engine hooks no layer output here")
        heads = sum(r.heads for r in ranks) if all(r.heads for r in ranks) else 0
        if heads:
            head_counts.add(heads)
        else:
            refused["heads"][layer] = _reason(ranks, "heads_refused", "no attention output projection found")
        if all(r.experts for r in ranks):
            experts[layer], top_k, routing[layer] = ranks[0].experts, ranks[0].top_k, ranks[0].routing
            if ranks[0].expert_groups:
                groups[layer] = (ranks[0].expert_groups, ranks[0].groups_selected)
        elif any(r.experts_refused for r in ranks):
            refused["experts"][layer] = _reason(ranks, "experts_refused", "")
    return ModelShape(
        model_id=model_id, stages=_stages(workers), hidden_size=first.hidden_size, num_layers=len(first.layers),
        num_heads=max(head_counts, default=0), experts_per_layer=experts, experts_per_token=top_k,
        routing=routing, expert_groups=groups, refused=refused, architecture=first.architecture,
        projections_per_layer=min(w.projections_per_layer for w in workers),
        topk_encoders={name: sha for name, sha in first.topk_encoders.items()
                       if all(w.topk_encoders.get(name) == sha for w in workers)},
    )


def _stages(workers: list[WorkerCapabilities]) -> dict[int, int]:
    """Layer -> pipeline stage, numbered in layer order by the set of ranks that run the layer
    (empty when every rank runs every layer: no pipeline parallelism)."""
    owners = [tuple(w.rank for w in workers if w.layers[i].owned) for i in range(len(workers[0].layers))]
    if len(set(owners)) <= 1:
        return {}
    numbered = {owner: stage for stage, owner in enumerate(dict.fromkeys(owners))}
    return {layer: numbered[owner] for layer, owner in enumerate(owners)}


def _reason(ranks: list[LayerCapability], field: str, default: str) -> str:
    reasons = [getattr(r, field) for r in ranks if getattr(r, field)]
    return reasons[0] if reasons else default
