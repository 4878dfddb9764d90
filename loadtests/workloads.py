"""Workloads: who is steered, with what. Each builds the benchmark's request list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from loadtests.vllm_bench import BenchRequest

SteeringFor = Callable[[int], dict | None]
ObserveFor = Callable[[int], dict | None]  # request i's `observe` field (None: not observed)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # served model name
    hidden_size: int
    num_layers: int


def unit_vector(hidden: int, seed: int) -> list[float]:
    """A seeded random direction of norm 1 (rounded for JSON bodies)."""
    v = np.random.default_rng(seed).standard_normal(hidden)
    return (v / np.linalg.norm(v)).round(6).tolist()


def distinct_vectors(model: ModelSpec, k: int, layers: int) -> SteeringFor:
    """Request i carries vector i % k, added on `layers` consecutive middle layers."""
    first = max(0, (model.num_layers - layers) // 2)
    chosen = list(range(first, first + layers))
    vectors = [unit_vector(model.hidden_size, seed) for seed in range(k)]
    return lambda i: {"interventions": [{"type": "add", "vector": vectors[i % k], "layers": chosen, "scale": 0.5}]}


def sae_clamps(sae: str, features: tuple[int, ...], distinct: int) -> SteeringFor:
    """Request i clamps every feature of `features` (one SAE, so one layer); configuration i % distinct
    (the clamp values differ between configurations)."""
    def steering(i: int) -> dict:
        base = 0.5 * (i % distinct)
        return {"interventions": [{"type": "feature", "sae": sae, "feature": f, "clamp": base + j}
                                  for j, f in enumerate(features)]}
    return steering


def mixed(steered: SteeringFor) -> SteeringFor:
    """Every other request steered."""
    return lambda i: steered(i) if i % 2 == 0 else None


def unsteered(i: int) -> None:
    return None


def experts_mask(layers: int) -> SteeringFor:
    """Request i disables expert i % 4 on the first `layers` MoE layers (MoE models only)."""
    return lambda i: {"interventions": [{"type": "experts", "disable": {str(l): [i % 4] for l in range(layers)}}]}


def experts_force(layers: int) -> SteeringFor:
    """Request i forces expert i % 4 into the top-k on the first `layers` MoE layers."""
    return lambda i: {"interventions": [{"type": "experts", "force": {str(l): [i % 4] for l in range(layers)}}]}


def probes(model: ModelSpec, count: int) -> ObserveFor:
    """Every request carries `count` inline probes (seeded unit directions, spread over the middle
    layers): its response returns each probe's projection at every computed position."""
    layers = [model.num_layers * (k + 1) // (count + 1) for k in range(count)]
    observe = {"probes": [{"name": f"p{k}", "vector": unit_vector(model.hidden_size, 500 + k), "layer": layer}
                          for k, layer in enumerate(layers)]}
    return lambda i: observe


def capture_last(model: ModelSpec, layers: int) -> ObserveFor:
    """Every request captures the residual stream at its last prompt token on `layers` layers
    spread over the model (what vector extraction asks for)."""
    chosen = [model.num_layers * (k + 1) // (layers + 1) for k in range(layers)]
    observe = {"capture": {"layers": chosen, "positions": "last"}}
    return lambda i: observe


def unobserved(i: int) -> None:
    return None


def build_requests(steering_for: SteeringFor, num_requests: int, input_len: int, output_len: int,
                   vocab: int = 49152, users: bool = False, seed: int = 0,
                   observe_for: ObserveFor = unobserved) -> list[BenchRequest]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(num_requests):
        prompt = rng.integers(100, vocab - 100, size=input_len).tolist()
        overrides: dict = {}
        steering = steering_for(i)
        if steering is not None:
            overrides["steering"] = steering
        observe = observe_for(i)
        if observe is not None:
            overrides["observe"] = observe
        if users:
            overrides["user"] = f"user-{i}"
        requests.append(BenchRequest(prompt, output_len, overrides or None))
    return requests
