"""Model adapters: one small module per architecture family says where its decoder layers, its
residual stream, its attention output and its MoE router are, and how it routes (see base.py).
`adapter_for` picks the family of a loaded vLLM model."""

from steer_serve_vllm.engine.adapters.registry import adapter_for

__all__ = ["adapter_for"]
