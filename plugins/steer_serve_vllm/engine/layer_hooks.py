"""Hooks on vLLM modules that apply each token's steering row inside the forward pass.

Legend: T = tokens in the step, D = hidden size, K = projections per layer,
H = heads on this tensor-parallel rank, E = routed experts.

Where each hook goes is the model adapter's answer (engine/adapters/, placed by engine/sites.py);
the hooks themselves are generic:
- decoder layer output: (hidden, residual) layers (vLLM's Llama family) get the edit in
  `residual`, whose sum with `hidden` is the stream after the layer; one-tensor layers (GPT-2,
  the Transformers backend) get it in the tensor. Eager hooks edit out of place (fused
  add+RMSNorm kernels mutate their inputs, so the layer's tensors are not ours to write); the
  compiled engines' opaque ops edit in place, which functionalization makes safe.
- attention output projection input (o_proj / c_proj / dense): per-head scale of the attention
  output ([T, H*hd], heads are sharded across TP ranks, rank r holding heads [r*H, (r+1)*H)).
- MoE router logits (softmax kinds): [T, E] plus a bias row (-inf disabled, +FORCE_LOGIT
  forced), before vLLM's top-k and renormalisation. Bias-corrected routing (DeepSeek-V3) is
  edited in its selection score instead (engine/selection.py).
Hooks are installed before the first forward pass: torch.compile traces them in, later hooks
would be ignored by the compiled graph. Compiled engines (`opaque`) call each site's edit through
one opaque custom op (engine/opaque_sites.py), so the graph grows by one node per site instead of
by every tensor operation of the edits. A hook may skip the kinds of edit no request of the step
uses and the projections at layers where no request of the step has one (most layers), so
unsteered batches cost almost nothing (`skip_unused`: eager, and compiled CPU engines,
where nothing replays a captured graph); under CUDA graphs every edit always runs (on identity
rows when unused), since a captured graph cannot branch on per-step host data.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from steer_serve_vllm.engine import opaque_sites
from steer_serve_vllm.engine.opaque_sites import LayerEdit
from steer_serve_vllm.engine.runtime import SteeringRuntime
from steer_serve_vllm.engine.selection import wrap_selection
from steer_serve_vllm.engine.sites import ModelSites


def install_hooks(model_sites: ModelSites, runtime: SteeringRuntime, max_dose: float | None = None,
                  skip_unused: bool = False, opaque: bool = False) -> list[Any]:
    """Register every hook the adapter placed; returns the handles (call .remove() to undo)."""
    needed = (lambda kind: kind in runtime.kinds_in_step) if skip_unused else (lambda kind: True)
    # projection slots the step's requests fill at a layer (0: skip the layer's projections), or all K
    slots = (lambda layer: runtime.projections_in_step.get(layer, 0)) if skip_unused else (
        lambda layer: runtime.tables.num_projections)
    pair = model_sites.adapter.stream == "pair"
    handles = []
    if opaque:
        opaque_sites.set_step_idle(False)
    for index, (layer, site) in enumerate(zip(model_sites.layers, model_sites.sites)):
        edit = _residual_edit(runtime, index, max_dose, needed, slots)
        if opaque:
            opaque_sites.register_layer_edit(index, edit)
            edit = _layer_output_op(index)
        handles.append(layer.register_forward_hook(layer_output_hook(edit, pair)))
        if site.attention_out is not None:
            scale = _head_scale(runtime, index, model_sites.first_head, model_sites.heads_per_rank, needed)
            if opaque:
                opaque_sites.register_row_edit("heads", index, scale)
                scale = _row_op("heads", index)
            handles.append(site.attention_out.register_forward_pre_hook(_head_hook(scale)))
        router = site.router
        if router is not None and router.logits is not None:
            bias = _router_bias(runtime, index, needed)
            if opaque:
                opaque_sites.register_row_edit("router", index, bias)
                bias = _row_op("router", index)
            handles.append(router.logits.register_forward_hook(_router_hook(bias)))
        elif router is not None:  # traced into a compiled graph: no per-step branching there
            wrap_selection(router.selector, runtime, index, needed if not opaque else (lambda kind: True))
    return handles


def opaque_sites_work(model_sites: ModelSites) -> bool:
    """Whether a compiled engine may call its sites through opaque ops. Not on models with
    bias-corrected grouped routing (DeepSeek-V3/R1): there a compiled graph holding any of our ops,
    even one that only copies its input, gives NaN logits on vLLM 0.32 CPU (DeepSeek-V2, same MLA
    layers with softmax routing, is exact); the in-place ops fail there too (unsteered tokens off
    HF, steered ones token 0). Not understood yet; those models keep traced hooks."""
    return not any(site.router is not None and site.router.logits is None for site in model_sites.sites)


def _layer_output_op(layer: int) -> LayerEdit:
    """The layer's edit as a call of its opaque op (in place on x): one node in a compiled graph."""

    def edit(base: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        x = _own(x)
        torch.ops.steer_serve.layer_output(x, base, layer)
        return x

    return edit


def _row_op(site: str, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The site's row edit as a call of the opaque row op (in place): one node in a compiled graph."""

    op = opaque_sites.ROW_OPS[site]

    def edit(rows: torch.Tensor) -> torch.Tensor:
        rows = _own(rows)
        op(rows, layer)
        return rows

    return edit


def _own(x: torch.Tensor) -> torch.Tensor:
    """A tensor the in-place op may write. Inside a compiled graph, x itself: the sites' tensors have
    no other reader (a layer's residual is read only by the next layer, whose fused add+RMSNorm
    writes it in place too; the attention output only by o_proj; the router logits only by the
    experts), and inductor re-inplaces the functionalized op, so the site allocates nothing. Eagerly
    (tests; not a compiled engine's hot path), a copy, keeping the eager hooks' out-of-place contract."""
    return x if torch.compiler.is_compiling() else x.clone()


def layer_output_hook(edit: LayerEdit, pair: bool) -> Callable[..., Any]:
    """A forward hook giving a decoder layer's output to `edit`. `pair` layers return (hidden,
    residual), stream = hidden + residual, and the edit goes into `residual`; other layers return
    the stream itself ([T, D] or [1, T, D]). Out of place."""

    def edit_layer_output(module: nn.Module, args: Any, output: Any) -> Any:
        if pair:
            if not (isinstance(output, tuple) and len(output) == 2):
                return output  # layer outside this pipeline stage (PPMissingLayer)
            hidden, residual = output  # [T, D], [T, D]
            return hidden, edit(hidden, residual)
        stream = output[0] if isinstance(output, tuple) else output  # [T, D] or [1, T, D]
        edited = edit(None, stream.reshape(-1, stream.shape[-1])).view(stream.shape)
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    return edit_layer_output


def _residual_edit(runtime: SteeringRuntime, layer: int, max_dose: float | None,
                   needed: Callable[[str], bool], slots: Callable[[int], int]) -> LayerEdit:
    """The steering edit of one decoder layer's output: (base, x) -> edited x, stream = base + x."""
    tables = runtime.tables
    topk = runtime.topk_encoders.get(layer)  # a TopK SAE's full encoder at this layer, if the server holds one

    def edit(base: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """The edited x, where the stream is base + x (x alone when base is None); [T, D]."""
        if not needed("add") and not needed("projection"):
            return x
        if needed("condition"):  # CAST: read the stream before this layer's edits, gate them after
            runtime.conditions.observe(layer, x if base is None else base + x)
            return torch.where(runtime.conditions.applies(layer, x.shape[0]), edits(base, x), x)
        return edits(base, x)

    def edits(base: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        rows = runtime.rows(x.shape[0])  # [T]
        stream = (lambda: x) if base is None else (lambda: base + x)  # after the additions, once x is rebound
        if needed("add"):
            delta = tables.added(layer, rows)  # [T, D]
            if max_dose is not None:  # a server setting, fixed at trace time
                delta = _clip_dose(delta, stream(), max_dose)
            if needed("dose"):  # per request (a caller's policy): a table row, so compiled graphs see it
                delta = _clip_row_dose(delta, stream(), tables.dose.index_select(0, rows))
            x = x + delta  # [T, D]
        num_projections = slots(layer) if needed("projection") else 0
        if num_projections == 0:
            return x
        directions, encoders = tables.projection_vectors(layer, rows)  # [T, K, D] each
        values = tables.proj_value[layer].index_select(0, rows)  # [T, K]
        offsets = tables.proj_offset[layer].index_select(0, rows)  # [T, K]
        thresholds = tables.proj_threshold[layer].index_select(0, rows)  # [T, K]
        rescales = tables.proj_rescale[layer].index_select(0, rows)  # [T, K]
        if topk is None or not needed("topk"):
            # all K slots: the fused pass costs about the same for any count, and unfilled slots
            # (zero vectors) add exact zeros, so a token's result never depends on its step's company
            return _project_all(stream(), x, directions, encoders, values, offsets, thresholds,
                                rescales if needed("rescale") else None)
        topk_rows = tables.proj_topk[layer].index_select(0, rows)  # [T, K]
        for k in range(num_projections):  # TopK features: selected among the k largest of the current stream
            threshold = torch.where(topk_rows[:, k : k + 1], topk.threshold(stream()), thresholds[:, k : k + 1])
            x = _project(stream(), x, directions[:, k], encoders[:, k], values[:, k : k + 1],
                         offsets[:, k : k + 1], threshold, rescales[:, k : k + 1])
        return x

    return edit


def _project(stream: torch.Tensor, residual: torch.Tensor, direction: torch.Tensor, encoder: torch.Tensor,
             value: torch.Tensor, offset: torch.Tensor, threshold: torch.Tensor, rescale: torch.Tensor) -> torch.Tensor:
    """One projection edit (ablate, clamp, SAE feature clamp; formulas on LayerProjection).

    stream/residual/direction/encoder: [T, D]; value/offset/threshold/rescale: [T, 1].
    Unused rows have a zero direction, which makes the edit exactly zero.
    """
    norm = stream.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [T, 1]
    scale = 1.0 + rescale * (stream.shape[-1] ** 0.5 / norm - 1.0)  # [T, 1]; 1 unless constant_norm_rescale
    read = scale * (stream * encoder).sum(dim=-1, keepdim=True) + offset  # [T, 1]
    feature = read * (read > threshold).to(read.dtype)  # [T, 1]; -inf threshold: the read itself
    return residual + (value - feature) * direction / scale  # [T, D]


def _project_all(stream: torch.Tensor, residual: torch.Tensor, directions: torch.Tensor, encoders: torch.Tensor,
                 values: torch.Tensor, offsets: torch.Tensor, thresholds: torch.Tensor,
                 rescales: torch.Tensor | None) -> torch.Tensor:
    """Every projection slot of a layer, in slot order: the same result as calling _project once per
    slot (slot k reads the stream the slots before it left), with the D-sized products done once in
    batched matmuls. Slot i moves the stream by c_i * direction_i, which changes what slot j reads by
    c_i * (direction_i . encoder_j): the per-token Gram matrix carries the dependency, and the
    sequential part runs on [T] scalars instead of [T, D] tensors (fewer, smaller kernels). With
    rescaling, the stream's norm is carried the same way (|s + c d|^2 = |s|^2 + 2c s.d + c^2 |d|^2).

    stream/residual: [T, D]; directions/encoders: [T, n, D]; values/offsets/thresholds/rescales:
    [T, n]; rescales None when no slot of the step rescales (every scale is then 1).
    """
    slots = directions.shape[1]
    reads = torch.bmm(encoders, stream.unsqueeze(-1)).squeeze(-1)  # [T, n]: stream . encoder_j
    gram = torch.bmm(directions, encoders.transpose(1, 2))  # [T, n, n]: direction_i . encoder_j
    if rescales is not None:
        along = torch.bmm(directions, stream.unsqueeze(-1)).squeeze(-1)  # [T, n]: stream . direction_j
        self_gram = torch.bmm(directions, directions.transpose(1, 2))  # [T, n, n]: direction_i . direction_j
        square = (stream * stream).sum(dim=-1)  # [T]: |stream|^2
    coefficients = []
    for k in range(slots):
        scale = 1.0
        if rescales is not None:
            norm = square.clamp_min(0.0).sqrt().clamp_min(1e-12)  # [T]
            scale = 1.0 + rescales[:, k] * (stream.shape[-1] ** 0.5 / norm - 1.0)  # [T]
        read = scale * reads[:, k] + offsets[:, k]  # [T]
        feature = read * (read > thresholds[:, k]).to(read.dtype)  # [T]
        coefficient = (values[:, k] - feature) / scale  # [T]: the stream moves by coefficient * direction_k
        reads = reads + coefficient.unsqueeze(-1) * gram[:, k]  # [T, n]
        if rescales is not None:
            square = square + coefficient * (2.0 * along[:, k] + coefficient * self_gram[:, k, k])  # [T]
            along = along + coefficient.unsqueeze(-1) * self_gram[:, k]  # [T, n]
        coefficients.append(coefficient)
    moves = torch.stack(coefficients, dim=-1).unsqueeze(1)  # [T, 1, n]
    return residual + torch.bmm(moves, directions).squeeze(1)  # [T, D]


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


def _head_scale(runtime: SteeringRuntime, layer: int, first: int, local_heads: int,
                needed: Callable[[str], bool]) -> Callable[[torch.Tensor], torch.Tensor]:
    scale_table = runtime.tables.head_scale[layer]  # [R, H_total]

    def scale_heads(flat: torch.Tensor) -> torch.Tensor:
        """flat: [T, H*hd], this rank's heads side by side."""
        if not needed("heads"):
            return flat
        num_tokens = flat.shape[0]
        scales = scale_table[:, first : first + local_heads].index_select(0, runtime.rows(num_tokens))  # [T, H]
        return (flat.view(num_tokens, local_heads, -1) * scales.unsqueeze(-1)).view(flat.shape)  # [T, H*hd]

    return scale_heads


def _head_hook(scale: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def scale_heads(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        attn = args[0]  # [T, H*hd] (or [1, T, H*hd] in vLLM's Transformers backend)
        return (scale(attn.reshape(-1, attn.shape[-1])).view(attn.shape), *args[1:])

    return scale_heads


def _router_bias(runtime: SteeringRuntime, layer: int, needed: Callable[[str], bool]) -> Callable[[torch.Tensor], torch.Tensor]:
    bias_table = runtime.tables.router_bias[layer]  # [R, E]

    def bias_router_logits(logits: torch.Tensor) -> torch.Tensor:
        """logits: [T, E]."""
        if not needed("routing"):
            return logits
        return logits + bias_table[:, : logits.shape[1]].index_select(0, runtime.rows(logits.shape[0]))  # [T, E]

    return bias_router_logits


def _router_hook(bias: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def bias_router_logits(module: nn.Module, args: Any, output: Any) -> Any:
        logits = output[0] if isinstance(output, tuple) else output  # [T, E]
        biased = bias(logits)
        return (biased, *output[1:]) if isinstance(output, tuple) else biased

    return bias_router_logits
