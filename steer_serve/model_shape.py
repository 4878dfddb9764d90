"""What the domain needs to know about the served model to validate a steering request."""

from __future__ import annotations

from dataclasses import dataclass, field

from steer_serve.request.resolved_steering import DEFAULT_PROJECTIONS_PER_LAYER


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the served model that bound what a steering request may name.

    `experts_per_layer` maps each MoE decoder layer whose experts the engine can disable/force to
    its number of routed experts (empty for dense models); `experts_per_token` is the router's
    top-k; `routing` names each such layer's routing kind (engine_capabilities.RoutingKind).
    `refused` maps an edit kind ("residual", "heads", "experts") to the layers where the engine
    cannot apply it, with the reason (from the engine's capability report). `stages` maps each
    layer to the pipeline-parallel stage that runs it (empty: one stage); edits whose state one
    layer hands to another (a CAST condition and the edits it gates) must stay on one stage.
    `projections_per_layer` bounds the ablate/clamp/feature-clamp edits per layer and token phase
    (the engine's tables).
    """

    model_id: str
    hidden_size: int
    num_layers: int
    num_heads: int = 0
    experts_per_layer: dict[int, int] = field(default_factory=dict)
    experts_per_token: int = 0
    routing: dict[int, str] = field(default_factory=dict)
    expert_groups: dict[int, tuple[int, int]] = field(default_factory=dict)  # layer -> (groups, groups per token)
    refused: dict[str, dict[int, str]] = field(default_factory=dict)
    architecture: str = ""
    stages: dict[int, int] = field(default_factory=dict)
    projections_per_layer: int = DEFAULT_PROJECTIONS_PER_LAYER  # the engine's K (--steering-projections)
    topk_encoders: dict[str, str] = field(default_factory=dict)  # TopK SAEs clampable here: name -> content sha256

    def stage(self, layer: int) -> int:
        """The pipeline stage that runs `layer` (0 without pipeline parallelism)."""
        return self.stages.get(layer, 0)

    def refusal(self, kind: str, layer: int) -> str | None:
        """Why the engine cannot apply `kind` on `layer` (None: it can)."""
        return self.refused.get(kind, {}).get(layer)

    @property
    def is_moe(self) -> bool:
        return bool(self.experts_per_layer)
