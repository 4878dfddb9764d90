"""Steering specs for the tests, each paired with its HF-reference additions.

The reference side is derived independently of the product's resolver: a spec is a list of
(vector, layer->scale, positions) entries and every entry becomes one hook per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.hf_reference import Addition


@dataclass(frozen=True)
class Entry:
    vector: np.ndarray | dict[int, np.ndarray]  # [D], or per layer for a library vector
    scales: dict[int, float]
    positions: str = "all"
    name: str | None = None  # library name; None = send inline
    per_layer_scale: bool = False

    def to_spec(self) -> dict:
        inline = None if self.name else self.vector.tolist()
        spec: dict = {"type": "add", "vector": self.name or inline, "positions": self.positions}
        if self.per_layer_scale:
            spec["scale"] = {str(layer): scale for layer, scale in self.scales.items()}
        else:
            (scale,) = set(self.scales.values())
            spec["layers"] = sorted(self.scales)
            spec["scale"] = scale
        return spec

    def to_additions(self) -> list[Addition]:
        return [Addition(layer, scale * self._direction(layer), self.positions) for layer, scale in self.scales.items()]

    def _direction(self, layer: int) -> torch.Tensor:
        vector = self.vector[layer] if isinstance(self.vector, dict) else self.vector
        return torch.from_numpy(vector.astype(np.float32))


@dataclass(frozen=True)
class Case:
    id: str
    entries: tuple[Entry, ...]

    def steering(self) -> dict:
        return {"interventions": [entry.to_spec() for entry in self.entries]}

    def additions(self) -> list[Addition]:
        return [add for entry in self.entries for add in entry.to_additions()]


def random_vector(dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def tiny_library_directions(dim: int, num_layers: int) -> dict[int, np.ndarray]:
    """Directions of the tiny model's library vector `tiny_a` (one per layer, all different)."""
    rng = np.random.default_rng(7)
    return {layer: rng.standard_normal(dim).astype(np.float32) for layer in range(num_layers)}


def tiny_cases(dim: int, library_vector: dict[int, np.ndarray]) -> list[Case]:
    """Several layers, scales, position modes and multi-vector specs for the tiny Llama."""
    v1, v2 = random_vector(dim, 1), random_vector(dim, 2)
    return [
        Case("layer0-all", (Entry(v1, {0: 0.3}),)),
        Case("last-layer-prompt-negative", (Entry(v2, {3: -0.5}, "prompt"),)),
        Case("per-layer-scale-generated", (Entry(v1, {1: 0.4, 2: -0.2}, "generated", per_layer_scale=True),)),
        Case("multi-vector-same-layer", (
            Entry(v1, {1: 0.3}), Entry(v2, {1: 0.2}, "prompt"), Entry(v2, {2: -0.3}, "generated"),
        )),
        Case("library-vector", (Entry(library_vector, {0: 0.1, 2: 0.1}, name="tiny_a"),)),
    ]
