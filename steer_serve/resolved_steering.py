"""A steering spec after resolution: concrete per-layer vectors, ready for the engine.

This is what crosses the API -> engine boundary and what identifies a steering configuration:
two requests with the same resolved additions share a fingerprint, an engine slot and a
prefix-cache salt, however they were spelt (vector name or inline, one or several entries).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

Positions = Literal["all", "prompt", "generated"]


@dataclass(frozen=True)
class LayerAddition:
    """Add `vector` ([D] float32) to the output of decoder `layer` at the given token positions."""

    layer: int
    positions: Positions
    vector: np.ndarray


@dataclass(frozen=True)
class ResolvedSteering:
    additions: tuple[LayerAddition, ...]

    @property
    def fingerprint(self) -> str:
        """Content hash of the additions; stable across processes and spellings."""
        digest = hashlib.sha256(b"steer-serve/v1")
        for add in self.additions:
            digest.update(f"|add|{add.layer}|{add.positions}|".encode())
            digest.update(np.ascontiguousarray(add.vector, dtype="<f4").tobytes())
        return digest.hexdigest()[:32]


def combine_additions(additions: list[LayerAddition]) -> ResolvedSteering:
    """Sum additions that target the same (layer, positions); order the result canonically."""
    summed: dict[tuple[int, str], np.ndarray] = {}
    for add in additions:
        key = (add.layer, add.positions)
        summed[key] = summed[key] + add.vector if key in summed else add.vector.astype(np.float32)
    return ResolvedSteering(
        tuple(LayerAddition(layer, pos, vec) for (layer, pos), vec in sorted(summed.items()))  # type: ignore[arg-type]
    )
