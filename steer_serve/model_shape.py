"""What the domain needs to know about the served model to validate a steering request."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Hidden size and decoder layer count of the served model."""

    model_id: str
    hidden_size: int
    num_layers: int
