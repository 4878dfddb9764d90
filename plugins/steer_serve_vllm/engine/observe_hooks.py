"""Forward hooks that hand each decoder layer's output stream to the Observer.

Registered after the steering hooks (engine/layer_hooks.py), so a layer's probe sees the stream
with that layer's edits applied. The stream is `hidden + residual` for (hidden, residual) layers
and the output tensor otherwise, as in layer_hooks. The hook never changes the output. Installed
before the first forward pass. Compiled engines (`opaque`) observe inside the layer's opaque op
(engine/opaque_sites.py), after its steering edit, instead of through a hook of their own. With
`skip_idle` (eager, and compiled CPU engines) nothing runs at layers no observed token of the step
is read at (so unobserved steps run none).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from steer_serve_vllm.engine import opaque_sites
from steer_serve_vllm.engine.observer import Observer
from steer_serve_vllm.engine.opaque_sites import LayerObserver
from steer_serve_vllm.engine.sites import ModelSites


def install_observer_hooks(model_sites: ModelSites, observer: Observer, skip_idle: bool,
                           opaque: bool = False) -> list[Any]:
    """`opaque`: the steering hooks' layer-output ops (install_hooks(opaque=True)) call the observer."""
    if opaque:
        for index in range(len(model_sites.layers)):
            opaque_sites.register_layer_observer(index, _observe_edited(observer, index, skip_idle))
        return []
    pair = model_sites.adapter.stream == "pair"
    return [layer.register_forward_hook(_observe_hook(observer, index, pair, skip_idle))
            for index, layer in enumerate(model_sites.layers)]


def _observe_edited(observer: Observer, layer: int, skip_idle: bool) -> LayerObserver:
    def observe(base: torch.Tensor | None, edited: torch.Tensor) -> None:
        """The stream is base + edited (edited alone when base is None): [T, D]."""
        if skip_idle and layer not in observer.layers_in_step:
            return
        observer.observe(layer, edited if base is None else base + edited)

    return observe


def _observe_hook(observer: Observer, layer: int, pair: bool, skip_idle: bool) -> Callable[..., Any]:
    def observe_layer_output(module: nn.Module, args: Any, output: Any) -> Any:
        if skip_idle and layer not in observer.layers_in_step:
            return output
        if pair:
            if not (isinstance(output, tuple) and len(output) == 2):
                return output  # layer outside this pipeline stage (PPMissingLayer)
            hidden, residual = output  # [T, D], [T, D]
            observer.observe(layer, hidden + residual)
            return output
        stream = output[0] if isinstance(output, tuple) else output  # [T, D] or [1, T, D]
        observer.observe(layer, stream.reshape(-1, stream.shape[-1]))
        return output

    return observe_layer_output
