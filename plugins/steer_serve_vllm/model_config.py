"""Read the served model's shape from its HF config (as vLLM loaded it)."""

from __future__ import annotations

from typing import Any

from steer_serve.model_shape import ModelShape

_EXPERT_COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")
_TOP_K_FIELDS = ("num_experts_per_tok", "moe_topk", "top_k")


def model_shape(model_id: str, text_config: Any) -> ModelShape:
    num_layers = text_config.num_hidden_layers
    return ModelShape(
        model_id=model_id,
        hidden_size=text_config.hidden_size,
        num_layers=num_layers,
        num_heads=text_config.num_attention_heads,
        experts_per_layer=_moe_layers(text_config, num_layers),
        experts_per_token=_first_int(text_config, _TOP_K_FIELDS),
    )


def _moe_layers(config: Any, num_layers: int) -> dict[int, int]:
    """Which decoder layers route to experts (Qwen2-MoE can mix dense and sparse layers)."""
    experts = _first_int(config, _EXPERT_COUNT_FIELDS)
    if experts == 0:
        return {}
    step = getattr(config, "decoder_sparse_step", 1) or 1
    dense = set(getattr(config, "mlp_only_layers", []) or [])
    return {layer: experts for layer in range(num_layers) if layer not in dense and (layer + 1) % step == 0}


def _first_int(config: Any, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0
