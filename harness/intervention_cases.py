"""Builders that produce a request intervention together with its HF-reference edits.

Each builder returns (spec, edits): `spec` goes into `steering.interventions`, `edits` into
`HFReference.greedy`. The reference side is computed here from first principles (unit
normalisation, head masks as zero scales), not with the product's resolver.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.hf_reference import Addition, Edit, HeadScale, Projection, RouterEdit

Built = tuple[dict, list[Edit]]


def add(vector: np.ndarray, layers: list[int], scale: float, positions: str = "all",
        max_dose: float | None = None) -> Built:
    spec = {"type": "add", "vector": vector.tolist(), "layers": layers, "scale": scale, "positions": positions}
    return spec, [Addition(layer, scale * torch.from_numpy(vector), positions, max_dose) for layer in layers]


def ablate(vector: np.ndarray, layers: list[int], positions: str = "all") -> Built:
    spec = {"type": "ablate", "vector": vector.tolist(), "layers": layers, "positions": positions}
    return spec, [Projection(layer, _unit(vector), 0.0, positions) for layer in layers]


def clamp(vector: np.ndarray, layers: list[int], value: float, positions: str = "all") -> Built:
    spec = {"type": "clamp", "vector": vector.tolist(), "layers": layers, "value": value, "positions": positions}
    return spec, [Projection(layer, _unit(vector), value, positions) for layer in layers]


def heads(num_heads: int, mask: dict[int, list[int]], scale: dict[int, dict[int, float]],
          positions: str = "all") -> Built:
    spec = {
        "type": "heads", "positions": positions,
        "mask": {str(layer): hs for layer, hs in mask.items()},
        "scale": {str(layer): {str(h): f for h, f in by_head.items()} for layer, by_head in scale.items()},
    }
    edits = []
    for layer in sorted(set(mask) | set(scale)):
        scales = torch.ones(num_heads)
        for head, factor in scale.get(layer, {}).items():
            scales[head] = factor
        scales[mask.get(layer, [])] = 0.0
        edits.append(HeadScale(layer, scales, positions))
    return spec, edits


def experts(disable: dict[int, list[int]], force: dict[int, list[int]], positions: str = "all") -> Built:
    spec = {
        "type": "experts", "positions": positions,
        "disable": {str(layer): ids for layer, ids in disable.items()},
        "force": {str(layer): ids for layer, ids in force.items()},
    }
    edits = [
        RouterEdit(layer, tuple(disable.get(layer, [])), tuple(force.get(layer, [])), positions)
        for layer in sorted(set(disable) | set(force))
    ]
    return spec, edits


def combine(*parts: Built) -> tuple[dict, list[Edit]]:
    """A steering object with several interventions, and all of their reference edits."""
    return {"interventions": [spec for spec, _ in parts]}, [edit for _, edits in parts for edit in edits]


def _unit(vector: np.ndarray) -> torch.Tensor:
    v = torch.from_numpy(vector.astype(np.float64))
    return (v / v.norm()).to(torch.float32)
