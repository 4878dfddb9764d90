"""The public `steering` request object: pydantic models, strict at the boundary.

Strict types everywhere (no "3" for 3, no true for 1) and `extra="forbid"` at every level,
so a misspelt field is an error instead of a silently unsteered request.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator,
                      model_validator)

from steer_serve.request.resolved_steering import Positions

# Hard caps that hold before the model is known; model-dependent limits are checked on resolution.
MAX_INLINE_VALUES = 65536
MAX_LAYERS_PER_INTERVENTION = 1024
MAX_NAME_LENGTH = 128

Number = Union[StrictInt, StrictFloat]


# Layer and head keys: ASCII digits only (str.isdigit() also accepts '²', which int() refuses) and
# short enough for int() (a 5000-digit key would raise outside validation, i.e. a 500).
_INDEX_KEY = re.compile(r"-?[0-9]{1,18}")


def _is_finite(value: float) -> bool:
    """math.isfinite, except that an integer too large for a float is not finite (no OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _require_finite(value: float, what: str) -> float:
    if not _is_finite(value):
        shown = "an integer too large for a float" if isinstance(value, int) else value
        raise ValueError(f"{what} must be a finite number, got {shown}")
    return value


def _short(key: str) -> str:
    return repr(key) if len(key) <= 24 else repr(key[:24]) + f"... ({len(key)} characters)"


def _check_layer_keys(mapping: dict[str, object], what: str) -> None:
    for key in mapping:
        if _INDEX_KEY.fullmatch(key) is None:
            raise ValueError(f"{what} key {_short(key)} is not a layer number")


class _Intervention(BaseModel):
    model_config = ConfigDict(extra="forbid")

    positions: Positions = Field("all", description="which tokens are edited: all, prompt or generated")


def _finite_values(value: str | list[float]) -> str | list[float]:
    if isinstance(value, list):
        bad = next((i for i, x in enumerate(value) if not _is_finite(x)), None)
        if bad is not None:
            shown = "an integer too large for a float" if isinstance(value[bad], int) else value[bad]
            raise ValueError(f"vector[{bad}] is {shown}; values must be finite")
    return value


VectorRef = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)] | Annotated[
    list[Number], Field(min_length=1, max_length=MAX_INLINE_VALUES)
]


class WhenCondition(BaseModel):
    """CAST's condition (IBM activation-steering): the edit applies only to requests whose prompt
    representation at `layer` (mean over the prompt's tokens, or its last token) has a cosine
    similarity with tanh of its projection on `vector` above (or below) `threshold`; decided once,
    when the prompt's last token passes `layer`, and held for the whole generation. `compare:
    "token"` gates per token instead: each token's own hidden state decides for that token."""

    model_config = ConfigDict(extra="forbid")

    vector: VectorRef = Field(description="condition direction: a vector library name, or inline hidden_size floats")
    layer: StrictInt = Field(description="decoder layer whose output (the residual stream after it) is read")
    threshold: Number = Field(description="compared with cos(h, tanh(P h)), P the projection on `vector`")
    above: StrictBool = Field(True, description="true: the condition holds when the similarity > threshold")
    compare: Literal["mean", "last", "token"] = Field(
        "mean", description="mean/last: the prompt's mean hidden state, or its last token's, decided once and held; "
                            "token: every token by its own hidden state (gated layers at or after `layer`)")

    @field_validator("vector")
    @classmethod
    def _finite_vector(cls, value: str | list[float]) -> str | list[float]:
        return _finite_values(value)

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, value: float) -> float:
        return _require_finite(value, "threshold")


class _ResidualIntervention(_Intervention):
    """Shared by interventions on the residual stream: they may be conditional (CAST's `when`)."""

    when: WhenCondition | None = Field(None, description="apply only to requests whose prompt meets this condition")


class _VectorIntervention(_ResidualIntervention):
    """Shared by interventions that act along a vector in the residual stream."""

    vector: VectorRef = Field(description="a vector library name, or an inline list of hidden_size floats")
    layers: Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_LAYERS_PER_INTERVENTION)] | None = Field(
        None, description="decoder layers whose output is edited; default: every layer of the named vector"
    )

    @field_validator("vector")
    @classmethod
    def _finite_vector(cls, value: str | list[float]) -> str | list[float]:
        return _finite_values(value)

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("layers must not repeat")
        return value


class AddIntervention(_VectorIntervention):
    """Add `scale * vector` to the output of each listed decoder layer (activation addition)."""

    type: Literal["add"]
    scale: Number | dict[StrictStr, Number] = Field(
        1.0, description='one scale, or per layer: {"10": 4.0, "12": 2.0}'
    )

    @field_validator("scale")
    @classmethod
    def _finite_scale(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(value, dict):
            if not value:
                raise ValueError("a per-layer scale needs at least one layer")
            _check_layer_keys(value, "per-layer scale")
            for key, scale in value.items():
                _require_finite(scale, f"scale for layer {key}")
            return value
        return _require_finite(value, "scale")


class AblateIntervention(_VectorIntervention):
    """Remove the component of the layer output along the (unit-normalised) direction."""

    type: Literal["ablate"]


class ClampIntervention(_VectorIntervention):
    """Set the component of the layer output along the (unit-normalised) direction to `value`."""

    type: Literal["clamp"]
    value: Number = Field(description="target projection onto the unit direction")

    @field_validator("value")
    @classmethod
    def _finite_value(cls, value: float) -> float:
        return _require_finite(value, "value")


class ExpertsIntervention(_Intervention):
    """Per MoE layer, experts never routed (`disable`) or always routed (`force`)."""

    type: Literal["experts"]
    disable: dict[StrictStr, Annotated[list[StrictInt], Field(min_length=1, max_length=1024)]] = Field(
        default_factory=dict, description='layer -> experts never routed, e.g. {"3": [1, 5]}'
    )
    force: dict[StrictStr, Annotated[list[StrictInt], Field(min_length=1, max_length=1024)]] = Field(
        default_factory=dict, description='layer -> experts always routed, e.g. {"2": [0]}'
    )

    @model_validator(mode="after")
    def _not_empty(self) -> "ExpertsIntervention":
        if not self.disable and not self.force:
            raise ValueError("give `disable` and/or `force`")
        _check_layer_keys(self.disable, "disable")
        _check_layer_keys(self.force, "force")
        return self


class HeadsIntervention(_Intervention):
    """Per layer, attention heads to mask (zero) or scale, before the output projection."""

    type: Literal["heads"]
    mask: dict[StrictStr, Annotated[list[StrictInt], Field(min_length=1, max_length=1024)]] = Field(
        default_factory=dict, description='layer -> heads zeroed, e.g. {"4": [0, 3]}'
    )
    scale: dict[StrictStr, dict[StrictStr, Number]] = Field(
        default_factory=dict, description='layer -> {head: factor}, e.g. {"4": {"1": 0.5}}'
    )

    @model_validator(mode="after")
    def _not_empty(self) -> "HeadsIntervention":
        if not self.mask and not self.scale:
            raise ValueError("give `mask` and/or `scale`")
        _check_layer_keys(self.mask, "mask")
        _check_layer_keys(self.scale, "scale")
        for layer, factors in self.scale.items():
            for head, factor in factors.items():
                if _INDEX_KEY.fullmatch(head) is None or head.startswith("-"):
                    raise ValueError(f"scale[{_short(layer)}] key {_short(head)} is not a head number")
                _require_finite(factor, f"scale of head {head} in layer {layer}")
        return self


class FeatureIntervention(_ResidualIntervention):
    """A sparse-autoencoder feature of the library's SAE `sae`, at the SAE's layer: add
    `strength * W_dec[feature]` (`normalize`: a unit-norm decoder row), or `clamp` the feature's
    activation to a value: `h + (clamp - f(h)) * W_dec[feature]`, f being the SAE's own encoder."""

    type: Literal["feature"]
    sae: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)] = Field(description="an SAE library name")
    feature: Annotated[StrictInt, Field(ge=0, le=2**31)] = Field(description="feature index, 0..d_sae-1")
    strength: Number | None = Field(None, description="add strength * W_dec[feature] to the layer output")
    clamp: Number | None = Field(None, description="set the feature's activation to this value")
    normalize: bool = Field(False, description="use the unit-normalised decoder row (with `strength`)")

    @model_validator(mode="after")
    def _strength_or_clamp(self) -> "FeatureIntervention":
        if (self.strength is None) == (self.clamp is None):
            raise ValueError("give exactly one of `strength` (add) and `clamp` (set the activation)")
        if self.clamp is not None and self.normalize:
            raise ValueError("`normalize` applies to `strength` only")
        value = self.strength if self.strength is not None else self.clamp
        _require_finite(value, "strength" if self.strength is not None else "clamp")
        return self


Intervention = Annotated[
    Union[AddIntervention, AblateIntervention, ClampIntervention, ExpertsIntervention, HeadsIntervention,
          FeatureIntervention],
    Field(discriminator="type"),
]
INTERVENTION_TYPES = frozenset({"add", "ablate", "clamp", "experts", "heads", "feature"})


class SteeringSpec(BaseModel):
    """The `steering` field of a completion request: a preset, interventions, or both (the
    preset's interventions come first, then these)."""

    model_config = ConfigDict(extra="forbid")

    preset: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_LENGTH)] | None = Field(
        None, description="a preset name (a stored bundle of interventions)"
    )
    interventions: Annotated[list[Intervention], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _preset_or_interventions(self) -> "SteeringSpec":
        if self.preset is None and self.interventions is None:
            raise ValueError("give `interventions`, a `preset`, or both")
        return self
