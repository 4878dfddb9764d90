"""Each hook site as one opaque torch custom op, for compiled (torch.compile) engines.

Why: dynamo traces a Python hook into the graph at every layer. Our layer-output edit (additions,
dose guards, K projections, the CAST gate) and the head scaling grew SmolLM2's graph from 695 to
~6,000 FX nodes, and since vLLM 0.32 on CPU recompiles at every start, a compiled steer-serve start
took 2.4x plain vLLM's (loadtests/hook_graph_size.py). Behind a custom op the graph grows by one
node per site; dynamo, AOT autograd and inductor never look inside.

Inside the op the edit runs as eager PyTorch. Where nothing replays a captured graph (CPU), the
op may branch on the step's host-side state exactly as the eager hooks do: skip the kinds of edit no
request uses, skip projections at layers the step's requests do not project at, skip unobserved
layers. Under CUDA graphs the op's kernels are recorded once and replayed, so there the installer
passes `skip_unused=False` and every edit runs on identity rows, as a traced graph would.

Each op finds its site's function by layer index in this process's registry. vLLM runs one model
per worker process, and the in-process test engines run one after another, so one engine's sites
are registered at a time; a later install replaces an earlier one's.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

# (base, x) -> edited x, where the stream is base + x (x alone when base is None); [T, D]
LayerEdit = Callable[[Optional[torch.Tensor], torch.Tensor], torch.Tensor]
# (base, edited x) -> None: reads the stream after the layer's edits
LayerObserver = Callable[[Optional[torch.Tensor], torch.Tensor], None]
RowEdit = Callable[[torch.Tensor], torch.Tensor]  # [T, N] -> [T, N]

_STEER: dict[int, LayerEdit] = {}
_OBSERVE: dict[int, LayerObserver] = {}
_ROWS: dict[tuple[str, int], RowEdit] = {}  # (site, layer) -> its edit; sites: "heads", "router"


def register_layer_edit(layer: int, edit: LayerEdit) -> None:
    _STEER[layer] = edit


def register_layer_observer(layer: int, observe: LayerObserver) -> None:
    _OBSERVE[layer] = observe


def register_row_edit(site: str, layer: int, edit: RowEdit) -> None:
    _ROWS[site, layer] = edit


def _fresh(result: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """A new contiguous tensor: a functional custom op may not return one of its inputs (copy when
    nothing was edited), and the compiled graph reads the output with the strides the fake gave."""
    if result is source:
        return source.clone(memory_format=torch.contiguous_format)
    return result.contiguous()


def _like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("steer_serve::layer_output", mutates_args=())
def layer_output(x: torch.Tensor, base: Optional[torch.Tensor], layer: int) -> torch.Tensor:
    """Decoder layer `layer`'s steering edit of x, then its observation; x: [T, D] -> [T, D]."""
    steer = _STEER.get(layer)
    edited = steer(base, x) if steer is not None else x
    observe = _OBSERVE.get(layer)
    if observe is not None:
        observe(base, edited)
    return _fresh(edited, x)


@layer_output.register_fake
def _layer_output_shape(x: torch.Tensor, base: Optional[torch.Tensor], layer: int) -> torch.Tensor:
    return _like(x)


@torch.library.custom_op("steer_serve::row_edit", mutates_args=())
def row_edit(rows: torch.Tensor, site: str, layer: int) -> torch.Tensor:
    """A per-token row edit at one site of layer `layer`: "heads" scales each head's slice of the
    attention output before o_proj ([T, H*hd]); "router" offsets the router logits to switch experts
    off or force them on ([T, E]). Same shape out as in."""
    return _fresh(_ROWS[site, layer](rows), rows)


@row_edit.register_fake
def _row_edit_shape(rows: torch.Tensor, site: str, layer: int) -> torch.Tensor:
    return _like(rows)
