"""A steering vector: one direction per decoder layer, plus provenance metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SteeringVector:
    """Per-layer directions (float32, 1-D, all the same length) keyed by decoder layer index.

    Layer L means the output of decoder layer L (0-based), as in repeng and llama.cpp.
    """

    directions: dict[int, np.ndarray]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a steering vector needs at least one layer")
        dims = {v.shape for v in self.directions.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"all directions must be 1-D and the same length, got shapes {dims}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    @property
    def dim(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def content_sha256(self) -> str:
        """Hash of the numbers themselves (layer order fixed), independent of file format."""
        digest = hashlib.sha256()
        for layer in self.layers:
            digest.update(layer.to_bytes(4, "little", signed=True))
            digest.update(np.ascontiguousarray(self.directions[layer], dtype="<f4").tobytes())
        return digest.hexdigest()
