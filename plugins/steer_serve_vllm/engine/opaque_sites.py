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

The ops edit their input in place and return nothing, registered with torch.library's low-level
`Library` API rather than `torch.library.custom_op`. Both choices are about the idle cost: a
compiled CPU step calls two ops per layer even when nobody steers. Measured per call under
inference mode (one CPU thread, [16, 576]): a functional `custom_op` 8.4 us (its Python wrapper
plus a copy, as a functional op may not return its input), a functional `Library` op 5.5 us, the
in-place `Library` op 2.5 us, no copy when nothing is edited. Functionalization turns the mutation
into an `auto_functionalized` node and inductor's re-inplacing pass back into an in-place call, so
the compiled graph allocates nothing for the site; an edited step copies its result into the input.

Idle steps (nobody steers or observes) return before the dispatcher: where ops branch per step
(CPU), the worker calls `set_step_idle` each step, and the compiled graph's calls of each op's
`.default` overload (`_return_when_idle`) then return without calling the C++ operator at all:
~0.3 us a call in a loop instead of ~1.5 us, and in an in-process CPU engine the idle op lines fell
from 0.38% to 0.07% of the graph (loadtests/reports/idle-before-dispatcher). The kernels keep their
own idle check for calls through the packet (`torch.ops.steer_serve.layer_output(...)`, as the hooks
call it uncompiled), which dispatch in C++. The head and router sites are separate ops because a
`str` argument costs ~0.2 us a call.

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
_HEADS: dict[int, RowEdit] = {}
_ROUTER: dict[int, RowEdit] = {}
_ROW_EDITS = {"heads": _HEADS, "router": _ROUTER}
_idle = False  # this step runs no site's edit: see set_step_idle


def register_layer_edit(layer: int, edit: LayerEdit) -> None:
    _STEER[layer] = edit


def register_layer_observer(layer: int, observe: LayerObserver) -> None:
    _OBSERVE[layer] = observe


def register_row_edit(site: str, layer: int, edit: RowEdit) -> None:
    """site: "heads" scales each head's slice of the attention output before o_proj ([T, H*hd]);
    "router" offsets the router logits to switch experts off or force them on ([T, E])."""
    _ROW_EDITS[site][layer] = edit


def set_step_idle(idle: bool) -> None:
    """Whether the coming step's ops all return at once. Only engines whose ops branch per step call
    it (CPU: no captured graph replays the ops' kernels); under CUDA graphs it stays False, so the
    capture records every edit. A newly installed engine starts not idle (install_hooks)."""
    global _idle
    _idle = idle


def _assign(target: torch.Tensor, result: torch.Tensor) -> None:
    """Write an out-of-place edit's result into the op's mutable input (nothing when unedited)."""
    if result is not target:
        target.copy_(result)


def _layer_output(x: torch.Tensor, base: Optional[torch.Tensor], layer: int) -> None:
    """Decoder layer `layer`'s steering edit of x in place, then its observation; x: [T, D]."""
    if _idle:
        return
    steer = _STEER.get(layer)
    if steer is not None:
        _assign(x, steer(base, x))
    observe = _OBSERVE.get(layer)
    if observe is not None:
        observe(base, x)


def _head_scale(rows: torch.Tensor, layer: int) -> None:
    if not _idle:
        _assign(rows, _HEADS[layer](rows))


def _router_bias(rows: torch.Tensor, layer: int) -> None:
    if not _idle:
        _assign(rows, _ROUTER[layer](rows))


def _return_when_idle(overload: torch._ops.OpOverload) -> None:
    """Make an idle call of `overload` return in Python, before the C++ dispatcher.

    Inductor's Python wrapper calls each site as `torch.ops.steer_serve.<op>.default(...)`, i.e.
    `OpOverload.__call__`, which calls `overload._op` (the C++ operator: argument parsing, boxing,
    dispatch, then back into Python for our kernel): 1.5 us an idle call in a loop, for nothing.
    Here `_op` becomes a Python function that returns at once when the step is idle and
    otherwise calls the original operator, so a steered or observed step (and any tracing: dynamo
    runs the op under fake tensors through the same `_op`) still goes through the dispatcher
    unchanged; an idle call costs 0.28 us in a loop. Done when the op is first looked up, before
    anything hashes it (`OpOverload.__hash__` hashes `_op`). Relies on torch's private
    `OpOverload._op` (torch 2.13; recorded in the plugin's ledger)."""
    dispatch = overload._op

    def call(*args: object, **kwargs: object) -> object:
        if _idle:
            return None
        return dispatch(*args, **kwargs)

    overload._op = call


# Kept alive for the process: dropping a Library unregisters its ops.
_LIBRARY = torch.library.Library("steer_serve", "DEF")
_LIBRARY.define("layer_output(Tensor(a!) x, Tensor? base, int layer) -> ()")
_return_when_idle(torch.ops.steer_serve.layer_output.default)
_LIBRARY.impl("layer_output", _layer_output, "CompositeExplicitAutograd")
torch.library.register_fake("steer_serve::layer_output", lambda x, base, layer: None, lib=_LIBRARY)
for _name, _kernel in (("head_scale", _head_scale), ("router_bias", _router_bias)):
    _LIBRARY.define(f"{_name}(Tensor(a!) rows, int layer) -> ()")
    _return_when_idle(getattr(torch.ops.steer_serve, _name).default)
    _LIBRARY.impl(_name, _kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"steer_serve::{_name}", lambda rows, layer: None, lib=_LIBRARY)
ROW_OPS = {"heads": torch.ops.steer_serve.head_scale, "router": torch.ops.steer_serve.router_bias}
