"""The public `observe` request object (probes and activation capture) and its resolution.

Strict pydantic at the boundary (extra="forbid", strict types); resolution checks what needs the
model (layers, hidden size) and the vector library, and turns every probe into a unit direction.
Errors are SteeringError(message, param) with param naming the field (`observe.probes[0].layer`),
answered as a 400 by the gateway. The contract is /work/team/observe-contract.md and the README.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

from steer_serve.model_shape import ModelShape
from steer_serve.request.errors import SteeringError, describe_validation_error

OBSERVE_FIELD = "observe"
MAX_PROBES = 8  # per request, besides the server's own probes (--probes)
MAX_CAPTURE_LAYERS = 8
CAPTURE_CAP = 256  # captured vectors per request (layers x positions); worker memory = lanes x CAP x D floats
MAX_SERVER_PROBES = 4  # the server's probes take columns from the request's MAX_PROBES
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

Number = Union[StrictInt, StrictFloat]


class ProbeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[StrictStr, Field(pattern=_NAME.pattern)]
    vector: Union[Annotated[StrictStr, Field(min_length=1, max_length=128)],
                  Annotated[list[Number], Field(min_length=1, max_length=65536)]]
    layer: StrictInt
    cosine: StrictBool = False


class CaptureSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    layers: Annotated[list[StrictInt], Field(min_length=1, max_length=MAX_CAPTURE_LAYERS)]
    positions: Union[Literal["last", "all"],
                     Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1, max_length=CAPTURE_CAP)]]


class ObserveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    probes: Annotated[list[ProbeSpec], Field(max_length=MAX_PROBES)] = []
    capture: CaptureSpec | None = None


@dataclass(frozen=True)
class Probe:
    name: str
    layer: int
    direction: np.ndarray  # [D] float32, unit norm
    cosine: bool = False
    report: bool = True  # False: a server probe only feeding /metrics, not returned in the response


@dataclass(frozen=True)
class Capture:
    layers: tuple[int, ...]
    positions: str | tuple[int, ...]  # "last" (the last prompt token), "all", or explicit positions


@dataclass(frozen=True)
class ResolvedObservation:
    probes: tuple[Probe, ...] = ()
    capture: Capture | None = None

    def with_server_probes(self, probes: tuple[Probe, ...]) -> "ResolvedObservation":
        return ResolvedObservation(self.probes + probes, self.capture)


def parse_observe(raw: object) -> ObserveSpec:
    try:
        spec = ObserveSpec.model_validate(raw)
    except ValidationError as exc:
        raise SteeringError("invalid observe: " + describe_validation_error(exc, OBSERVE_FIELD), OBSERVE_FIELD) from None
    if not spec.probes and spec.capture is None:
        raise SteeringError("observe needs `probes` or `capture`", OBSERVE_FIELD)
    return spec


class ObserveResolver:
    """Checks an ObserveSpec against the model and the vector library (a `get(name)` whose entries
    carry `.vector.directions`), giving unit probe directions."""

    def __init__(self, shape: ModelShape, library: object) -> None:
        self.shape = shape
        self.library = library

    def resolve(self, spec: ObserveSpec, max_tokens: int | None) -> ResolvedObservation:
        names = [p.name for p in spec.probes]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise SteeringError(f"probe name {name!r} is used twice", f"{OBSERVE_FIELD}.probes[{i}].name")
        probes = tuple(self.probe(p, f"{OBSERVE_FIELD}.probes[{i}]") for i, p in enumerate(spec.probes))
        capture = None if spec.capture is None else self._capture(spec.capture, max_tokens)
        return ResolvedObservation(probes, capture)

    def probe(self, spec: ProbeSpec, where: str, report: bool = True) -> Probe:
        layer = self._layer(spec.layer, f"{where}.layer")
        direction = self._direction(spec.vector, layer, f"{where}.vector")
        return Probe(spec.name, layer, direction, spec.cosine, report)

    def _layer(self, layer: int, where: str) -> int:
        if not 0 <= layer < self.shape.num_layers:
            raise SteeringError(f"layer {layer} is out of range; the model has layers 0..{self.shape.num_layers - 1}",
                                where)
        return layer

    def _direction(self, vector: str | list[float], layer: int, where: str) -> np.ndarray:
        if isinstance(vector, str):
            try:
                entry = self.library.get(vector)
            except KeyError as exc:
                raise SteeringError(exc.args[0], where) from None
            directions = entry.vector.directions
            if layer not in directions:
                raise SteeringError(f"vector {vector!r} has no direction for layer {layer} "
                                    f"(it has layers {sorted(directions)})", where)
            values = np.asarray(directions[layer], dtype=np.float64)
        else:
            if len(vector) != self.shape.hidden_size:
                raise SteeringError(f"inline vector has {len(vector)} values; the model's hidden size is "
                                    f"{self.shape.hidden_size}", where)
            values = np.asarray(vector, dtype=np.float64)
        norm = float(np.linalg.norm(values)) if np.isfinite(values).all() else float("nan")
        if not np.isfinite(norm) or norm == 0.0:
            raise SteeringError("a probe vector must be finite and non-zero", where)
        return (values / norm).astype(np.float32)

    def _capture(self, spec: CaptureSpec, max_tokens: int | None) -> Capture:
        where = f"{OBSERVE_FIELD}.capture"
        layers = [self._layer(layer, f"{where}.layers") for layer in spec.layers]
        if len(set(layers)) != len(layers):
            raise SteeringError("capture names a layer twice", f"{where}.layers")
        positions = spec.positions
        if isinstance(positions, list):
            if len(set(positions)) != len(positions):
                raise SteeringError("capture names a position twice", f"{where}.positions")
            count = len(positions)
        elif positions == "all":
            count = max_tokens or 0  # the prompt length is unknown here; the worker truncates (flagged)
        else:
            count = 1
        if count * len(layers) > CAPTURE_CAP:
            raise SteeringError(f"capture of {len(layers)} layers x {count} positions exceeds the cap of "
                                f"{CAPTURE_CAP} vectors per request", where)
        return Capture(tuple(layers), positions if isinstance(positions, str) else tuple(positions))


_SERVER_PROBES = TypeAdapter(Annotated[list[ProbeSpec], Field(min_length=1, max_length=MAX_SERVER_PROBES)])


def read_server_probes(path: Path) -> list[ProbeSpec]:
    """The `--probes` file: a YAML (or JSON) list of probes; ValueError naming what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text())
        probes = _SERVER_PROBES.validate_python(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read probes file {path}: {exc}") from None
    except ValidationError as exc:
        raise ValueError(f"probes file {path}: {describe_validation_error(exc, 'probes')}") from None
    names = [p.name for p in probes]
    if len(set(names)) != len(names):
        raise ValueError(f"probes file {path}: probe names must be unique, got {names}")
    return probes
