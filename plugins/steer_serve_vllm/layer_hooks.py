"""Forward hooks on vLLM decoder layers that add each token's steering to the residual stream.

vLLM's Llama-family decoder layers return (hidden_states, residual), and the stream after the
layer is their sum; adding the steering to `residual` (out of place: fused add+RMSNorm kernels
mutate their inputs) is exactly "add to the output of layer L". The hooks must be installed
before the first forward pass, because torch.compile traces them in; hooks added later are
ignored by the compiled graph.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from steer_serve_vllm.steering_runtime import SteeringRuntime


def find_decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList of decoder layers (`model.model.layers` for the Llama family)."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise RuntimeError(f"steer-serve: no ModuleList of {num_layers} decoder layers in {type(model).__name__}")


def install_layer_hooks(layers: nn.ModuleList, runtime: SteeringRuntime) -> list[Any]:
    """Register one hook per decoder layer; returns the handles (call .remove() to undo)."""
    return [layer.register_forward_hook(_residual_hook(runtime, index)) for index, layer in enumerate(layers)]


def _residual_hook(runtime: SteeringRuntime, layer: int) -> Callable[..., Any]:
    def add_steering(module: nn.Module, args: Any, output: Any) -> Any:
        if not (isinstance(output, tuple) and len(output) == 2):
            return output  # layer outside this pipeline stage (PPMissingLayer) or another signature
        hidden_states, residual = output  # [T, D], [T, D]
        delta = runtime.layer_delta(layer, hidden_states.shape[0])  # [T, D]
        return hidden_states, residual + delta

    return add_steering

