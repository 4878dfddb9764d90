"""Hooks on vLLM modules that apply each token's steering row inside the forward pass.

Legend: T = tokens in the step, D = hidden size, K = projections per layer,
H = heads on this tensor-parallel rank, E = routed experts.

- decoder layer output: vLLM's Llama-family layers return (hidden, residual) and the stream
  after the layer is their sum. Additions and projections are applied to `residual`, out of
  place (fused add+RMSNorm kernels mutate their inputs), which is exactly an edit of the
  layer's output.
- attention `o_proj` input: per-head scale of the attention output ([T, H*hd], heads are
  sharded across TP ranks, rank r holding heads [r*H, (r+1)*H)).
- MoE `gate` output: router logits [T, E] plus a bias row (-inf disabled, +FORCE_LOGIT forced),
  before vLLM's top-k and renormalisation.
Hooks are installed before the first forward pass: torch.compile traces them in, later hooks
would be ignored by the compiled graph. In eager mode (`skip_unused`), a hook skips the kinds of
edit no request of the step uses, so unsteered batches cost almost nothing; a compiled graph
cannot branch on per-step data, so there every hook always runs (on identity rows when unused).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from steer_serve_vllm.engine.runtime import SteeringRuntime


def find_decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList of decoder layers (`model.model.layers` for the Llama family)."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise RuntimeError(f"steer-serve: no ModuleList of {num_layers} decoder layers in {type(model).__name__}")


def find_router_gate(layer: nn.Module) -> nn.Module | None:
    """The MoE router linear of a decoder layer (`mlp.gate` / `block_sparse_moe.gate`), if any."""
    for name, module in layer.named_modules():
        if name.split(".")[-1] == "gate" and type(module).__name__ == "GateLinear":
            return module
    return None


def install_hooks(layers: nn.ModuleList, runtime: SteeringRuntime, tp_rank: int, tp_size: int,
                  max_dose: float | None = None, skip_unused: bool = False) -> list[Any]:
    """Register every hook; returns the handles (call .remove() to undo)."""
    needed = (lambda kind: kind in runtime.kinds_in_step) if skip_unused else (lambda kind: True)
    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(_residual_hook(runtime, index, max_dose, needed)))
        o_proj = getattr(getattr(layer, "self_attn", None), "o_proj", None)
        if o_proj is not None:
            handles.append(o_proj.register_forward_pre_hook(_head_hook(runtime, index, tp_rank, tp_size, needed)))
        gate = find_router_gate(layer)
        if gate is not None:
            handles.append(gate.register_forward_hook(_router_hook(runtime, index, needed)))
    return handles


def _residual_hook(runtime: SteeringRuntime, layer: int, max_dose: float | None,
                   needed: Callable[[str], bool]) -> Callable[..., Any]:
    tables = runtime.tables
    num_projections = tables.proj_dir.shape[2]

    def edit_layer_output(module: nn.Module, args: Any, output: Any) -> Any:
        if not (isinstance(output, tuple) and len(output) == 2):
            return output  # layer outside this pipeline stage (PPMissingLayer) or another signature
        hidden, residual = output  # [T, D], [T, D]
        rows = runtime.rows(hidden.shape[0])  # [T]
        if needed("add"):
            delta = tables.add[layer].index_select(0, rows)  # [T, D]
            if max_dose is not None:  # a server setting, fixed at trace time
                delta = _clip_dose(delta, hidden + residual, max_dose)
            if needed("dose"):  # per request (a caller's policy): a table row, so compiled graphs see it
                delta = _clip_row_dose(delta, hidden + residual, tables.dose.index_select(0, rows))
            residual = residual + delta  # [T, D]
        if not needed("projection"):
            return hidden, residual
        directions = tables.proj_dir[layer].index_select(0, rows)  # [T, K, D]
        values = tables.proj_value[layer].index_select(0, rows)  # [T, K]
        for k in range(num_projections):
            unit = directions[:, k]  # [T, D]; zero rows make this a no-op
            current = ((hidden + residual) * unit).sum(dim=-1, keepdim=True)  # [T, 1]
            residual = residual + (values[:, k : k + 1] - current) * unit  # [T, D]
        return hidden, residual

    return edit_layer_output


def _clip_dose(delta: torch.Tensor, stream: torch.Tensor, max_dose: float) -> torch.Tensor:
    """Scale each token's addition down to at most max_dose * |layer output| (dose guardrail)."""
    limit = max_dose * stream.norm(dim=-1, keepdim=True)  # [T, 1]
    size = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [T, 1]
    return delta * (limit / size).clamp(max=1.0)  # [T, D]


def _clip_row_dose(delta: torch.Tensor, stream: torch.Tensor, dose: torch.Tensor) -> torch.Tensor:
    """Like _clip_dose with each token's own limit `dose` ([T], float32; 0 = no limit)."""
    limit = dose.unsqueeze(-1).to(stream.dtype) * stream.norm(dim=-1, keepdim=True)  # [T, 1]
    size = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [T, 1]
    factor = (limit / size).clamp(max=1.0)  # [T, 1]
    return delta * torch.where(dose.unsqueeze(-1) > 0, factor, torch.ones_like(factor))  # [T, D]


def _head_hook(runtime: SteeringRuntime, layer: int, tp_rank: int, tp_size: int,
               needed: Callable[[str], bool]) -> Callable[..., Any]:
    scale_table = runtime.tables.head_scale[layer]  # [R, H_total]
    local_heads = scale_table.shape[1] // tp_size
    first = tp_rank * local_heads

    def scale_heads(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not needed("heads"):
            return args
        attn = args[0]  # [T, H*hd]
        num_tokens = attn.shape[0]
        scales = scale_table[:, first : first + local_heads].index_select(0, runtime.rows(num_tokens))  # [T, H]
        scaled = attn.view(num_tokens, local_heads, -1) * scales.unsqueeze(-1)  # [T, H, hd]
        return (scaled.view(attn.shape), *args[1:])

    return scale_heads


def _router_hook(runtime: SteeringRuntime, layer: int, needed: Callable[[str], bool]) -> Callable[..., Any]:
    bias_table = runtime.tables.router_bias[layer]  # [R, E]

    def bias_router_logits(module: nn.Module, args: Any, output: Any) -> Any:
        if not needed("routing"):
            return output
        logits = output[0] if isinstance(output, tuple) else output  # [T, E]
        biased = logits + bias_table[:, : logits.shape[1]].index_select(0, runtime.rows(logits.shape[0]))  # [T, E]
        return (biased, *output[1:]) if isinstance(output, tuple) else biased

    return bias_router_logits
