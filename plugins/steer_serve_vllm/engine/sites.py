"""Place every decoder layer's edit sites with the model's adapter, and say what they allow.

The capability report built here is what the worker answers to the API process (the
handshake): it describes the hooks actually installed, so the API never accepts an edit that
no hook would apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from steer_serve.engine_capabilities import LayerCapability, WorkerCapabilities
from steer_serve_vllm.engine.adapters.base import Adapter, LayerSites, get_path
from steer_serve_vllm.engine.adapters.routing import find_moe_runner, router_site

_ROUTER_LINEAR_NAMES = ("gate", "router")


@dataclass(frozen=True)
class ModelSites:
    adapter: Adapter
    layers: nn.ModuleList
    sites: list[LayerSites]
    heads_per_rank: int
    first_head: int


@dataclass(frozen=True)
class SiteSwitches:
    """Which optional sites the operator installs (`--no-head-sites`, `--no-expert-sites`). Each site
    is one op call per layer on every compiled step, steered or not; one left out is refused
    at request time with the flag named, never silently skipped."""

    heads: bool = True
    experts: bool = True


HEADS_SWITCHED_OFF = "head sites are not installed on this server (--no-head-sites)"
EXPERTS_SWITCHED_OFF = "expert sites are not installed on this server (--no-expert-sites)"


def place_sites(adapter: Adapter, model: nn.Module, num_layers: int, num_heads: int,
                tp_rank: int, tp_size: int, switches: SiteSwitches = SiteSwitches()) -> ModelSites:
    layers = get_path(model, adapter.layers_path)
    if not isinstance(layers, nn.ModuleList) or len(layers) != num_layers:
        found = "nothing" if layers is None else f"{type(layers).__name__} of {len(layers)}"
        raise RuntimeError(f"steer-serve: no ModuleList of {num_layers} decoder layers at "
                           f"{type(model).__name__}.{adapter.layers_path} ({found})")
    local_heads = num_heads // tp_size if num_heads % tp_size == 0 else 0
    sites = [_layer_sites(adapter, layer, local_heads, switches) for layer in layers]
    if any(s.router or s.experts_refused for s in sites):  # an MoE model: say why dense layers refuse
        sites = [s if s.router or s.experts_refused else
                 LayerSites(s.attention_out, s.heads_refused, None, "dense layer: its MLP has no router")
                 for s in sites]
    return ModelSites(adapter, layers, sites, local_heads, tp_rank * local_heads)


def _layer_sites(adapter: Adapter, layer: nn.Module, local_heads: int, switches: SiteSwitches) -> LayerSites:
    attention_out = get_path(layer, adapter.attention_out)
    heads_refused = None
    if attention_out is None:
        heads_refused = f"no attention output projection at {adapter.attention_out}"
    elif not local_heads:
        attention_out, heads_refused = None, "attention heads do not split evenly across tensor-parallel ranks"
    elif not switches.heads:
        attention_out, heads_refused = None, HEADS_SWITCHED_OFF
    runner = find_moe_runner(layer)
    if runner is None:
        return LayerSites(attention_out, heads_refused)
    if not switches.experts:
        return LayerSites(attention_out, heads_refused, None, EXPERTS_SWITCHED_OFF)
    site, refused = router_site(runner, _router_linear(layer))
    return LayerSites(attention_out, heads_refused, site, refused)


def _router_linear(layer: nn.Module) -> nn.Module | None:
    """The GateLinear producing this layer's router logits (`gate`, or gpt-oss's `router`)."""
    for name, module in layer.named_modules():
        if name.split(".")[-1] in _ROUTER_LINEAR_NAMES and type(module).__name__ == "GateLinear":
            return module
    return None


def _owned(layer: nn.Module) -> bool:
    return type(layer).__name__ != "PPMissingLayer"  # a layer of another pipeline stage


def owned_layers(model_sites: ModelSites) -> list[int]:
    """The decoder layers this pipeline stage runs (all of them without pipeline parallelism)."""
    return [index for index, layer in enumerate(model_sites.layers) if _owned(layer)]


def capabilities(model_sites: ModelSites, rank: int, hidden_size: int, projections: int,
                 topk_encoders: dict[str, str]) -> WorkerCapabilities:
    """This worker's report: one entry per decoder layer, refusals with their reasons, the
    projection edits per layer its tables take, and the TopK encoders it holds."""
    layers = []
    for index, (layer, site) in enumerate(zip(model_sites.layers, model_sites.sites)):
        router = site.router
        layers.append(LayerCapability(
            layer=index, owned=_owned(layer), residual=True,
            heads=model_sites.heads_per_rank if site.attention_out is not None else 0,
            first_head=model_sites.first_head, heads_refused=site.heads_refused,
            experts=router.experts if router else 0, top_k=router.top_k if router else 0,
            routing=router.kind if router else None, experts_refused=site.experts_refused,
            expert_groups=router.groups if router else 0,
            groups_selected=router.groups_selected if router else 0,
        ))
    return WorkerCapabilities(rank=rank, architecture=model_sites.adapter.name, hidden_size=hidden_size,
                              layers=layers, projections_per_layer=projections, topk_encoders=topk_encoders)
