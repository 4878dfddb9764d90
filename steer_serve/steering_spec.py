"""The public `steering` request object: pydantic models, strict at the boundary.

Strict types everywhere (no "3" for 3, no true for 1) and `extra="forbid"` at every level,
so a misspelt field is an error instead of a silently unsteered request.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator

# Hard caps that hold before the model is known; model-dependent limits are checked on resolution.
MAX_INLINE_VALUES = 65536
MAX_LAYERS_PER_INTERVENTION = 1024
MAX_NAME_LENGTH = 128

Number = Union[StrictInt, StrictFloat]
Positions = Literal["all", "prompt", "generated"]


def _require_finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


class AddIntervention(BaseModel):
    """Add `scale * vector` to the output of each listed decoder layer (activation addition)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["add"]
    vector: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)] | Annotated[
        list[Number], Field(min_length=1, max_length=MAX_INLINE_VALUES)
    ] = Field(description="a vector library name, or an inline list of hidden_size floats")
    layers: Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_LAYERS_PER_INTERVENTION)] | None = Field(
        None, description="decoder layers whose output is steered; default: every layer of the named vector"
    )
    scale: Number | dict[StrictStr, Number] = Field(
        1.0, description='one scale, or per layer: {"10": 4.0, "12": 2.0}'
    )
    positions: Positions = Field("all", description="which tokens are steered")

    @field_validator("vector")
    @classmethod
    def _finite_vector(cls, value: str | list[float]) -> str | list[float]:
        if isinstance(value, list):
            bad = next((i for i, x in enumerate(value) if not math.isfinite(x)), None)
            if bad is not None:
                raise ValueError(f"vector[{bad}] is {value[bad]}; values must be finite")
        return value

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("layers must not repeat")
        return value

    @field_validator("scale")
    @classmethod
    def _finite_scale(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(value, dict):
            if not value:
                raise ValueError("a per-layer scale needs at least one layer")
            for key, scale in value.items():
                if not key.lstrip("-").isdigit():
                    raise ValueError(f"per-layer scale key {key!r} is not a layer number")
                _require_finite(scale, f"scale for layer {key}")
            return value
        return _require_finite(value, "scale")


Intervention = Annotated[Union[AddIntervention], Field(discriminator="type")]
INTERVENTION_TYPES = frozenset({"add"})


class SteeringSpec(BaseModel):
    """The `steering` field of a completion request."""

    model_config = ConfigDict(extra="forbid")

    interventions: Annotated[list[Intervention], Field(min_length=1)]
