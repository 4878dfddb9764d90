"""What the domain needs to know about the served model to validate a steering request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the served model that bound what a steering request may name.

    `experts_per_layer` maps each MoE decoder layer to its number of routed experts (empty for
    dense models); `experts_per_token` is the router's top-k.
    """

    model_id: str
    hidden_size: int
    num_layers: int
    num_heads: int = 0
    experts_per_layer: dict[int, int] = field(default_factory=dict)
    experts_per_token: int = 0

    @property
    def is_moe(self) -> bool:
        return bool(self.experts_per_layer)
