"""What an adapter tells the generic hooks about one architecture family.

An adapter answers four questions for a loaded vLLM model, and nothing else:
- where the decoder layers are (a ModuleList; layer L's output is the residual stream after L);
- how a layer returns the stream: `pair` = (hidden, residual) whose sum is the stream (vLLM's
  own Llama-family layers), `tensor` = the stream itself (GPT-2, vLLM's Transformers backend);
- which module takes the attention output as input, heads concatenated ([T, H_local*hd]): the
  place to scale heads (o_proj, c_proj, dense);
- where the MoE router is and how it routes (routing.py reads that off vLLM's router object).
Anything an adapter cannot place is reported with its reason (capability handshake), never
silently skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from steer_serve.engine_capabilities import RoutingKind

Stream = Literal["pair", "tensor"]


@dataclass(frozen=True)
class RouterSite:
    """An MoE router the engine can edit.

    `logits` is the module whose output is the router logits [T, E] (edited for the softmax
    kinds); `selector` is vLLM's router object whose expert selection is wrapped (the
    bias-corrected kind, where logits cannot switch an expert off)."""

    kind: RoutingKind
    experts: int
    top_k: int
    logits: nn.Module | None = None
    selector: object | None = None
    groups: int = 0  # expert groups (grouped kinds; 0 otherwise)
    groups_selected: int = 0  # groups each token may route into


@dataclass(frozen=True)
class LayerSites:
    """Where one decoder layer's edits go; a None site carries its refusal reason."""

    attention_out: nn.Module | None
    heads_refused: str | None = None
    router: RouterSite | None = None
    experts_refused: str | None = None


@dataclass(frozen=True)
class Adapter:
    """One architecture family. `layers_path` is a dotted path from the vLLM model's root;
    `attention_out` and `mlp` are paths inside a decoder layer."""

    name: str
    architectures: tuple[str, ...]  # HF `architectures` names this family serves
    layers_path: str
    stream: Stream
    attention_out: str
    mlp: str = "mlp"


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    """`root.a.b.c` for path "a.b.c", or None when a part is missing."""
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None
