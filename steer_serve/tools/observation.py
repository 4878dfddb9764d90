"""The `steer_serve.observe` object of a server response, parsed and decoded on the client side.

Non-streaming responses carry it as a top-level `steer_serve` key; streaming responses in one extra
SSE chunk (empty `choices`) right before `data: [DONE]`. Captured residual vectors travel as base64 of
little-endian float32, row-major; decoding checks every size against the declared shape, so a
truncated or mis-encoded payload is an error naming the field rather than a silently wrong array.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from steer_serve.request.errors import describe_validation_error


class ObservationError(ValueError):
    """A response whose observation is missing or malformed; the message names the field."""


class ObservationUnavailable(ObservationError):
    """The server answered but could not observe this request (e.g. all observation lanes were taken):
    worth another try, unlike a malformed object."""


class ProbeTrace(BaseModel):
    """One probe's per-position values: projection on the unit direction (and cosine if asked)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    layer: int = Field(ge=0)
    projection: list[float]
    cosine: list[float] | None = None


class CapturedLayer(BaseModel):
    """The residual stream after one layer at some positions, still encoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: int = Field(ge=0)
    positions: list[int]
    shape: tuple[int, int]
    dtype: Literal["float32"]
    data: str
    truncated: bool = False

    def array(self, where: str = "capture") -> np.ndarray:
        """(len(positions), hidden) float32, rows in `positions` order."""
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ObservationError(f"{where}.data: not base64 ({exc})") from exc
        rows, hidden = self.shape
        if len(raw) != rows * hidden * 4:
            raise ObservationError(f"{where}.data: {len(raw)} bytes, but shape {list(self.shape)} of float32 "
                                   f"needs {rows * hidden * 4}")
        if rows != len(self.positions):
            raise ObservationError(f"{where}.shape: {rows} rows for {len(self.positions)} positions")
        return np.frombuffer(raw, dtype="<f4").reshape(rows, hidden)


class Observation(BaseModel):
    """What the server observed for one request (one choice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_prompt_tokens: int = Field(ge=0)
    positions: list[int] = []
    probes: list[ProbeTrace] = []
    capture: list[CapturedLayer] = []

    @model_validator(mode="after")
    def _one_value_per_position(self) -> Observation:
        for index, probe in enumerate(self.probes):
            for field in ("projection", "cosine"):
                values = getattr(probe, field)
                if values is not None and len(values) != len(self.positions):
                    raise ValueError(f"probes[{index}].{field}: {len(values)} values for "
                                     f"{len(self.positions)} positions")
        return self

    def probe(self, name: str) -> ProbeTrace:
        for probe in self.probes:
            if probe.name == name:
                return probe
        raise ObservationError(f"no probe {name!r} in the observation (have {[p.name for p in self.probes]})")

    def captured(self, layer: int) -> tuple[list[int], np.ndarray]:
        """(positions, (len(positions), hidden) float32) captured at `layer`; a truncated capture is refused."""
        for index, block in enumerate(self.capture):
            if block.layer == layer:
                if block.truncated:
                    raise ObservationError(f"capture[{index}] (layer {layer}) was truncated by the server's cap")
                return block.positions, block.array(f"capture[{index}]")
        raise ObservationError(f"no capture of layer {layer} in the observation "
                               f"(have {[b.layer for b in self.capture]})")


def parse_observation(body: dict[str, Any]) -> Observation:
    """The observation of a non-streaming response body (or of the final SSE chunk)."""
    try:
        found = body["steer_serve"]["observe"]
    except (KeyError, TypeError) as exc:
        raise ObservationError("response has no steer_serve.observe object (did the request ask for observe?)") from exc
    if found is None:
        raise ObservationError("the server returned no observation (steer_serve.observe is null)")
    if isinstance(found, dict) and set(found) == {"error"}:
        raise ObservationUnavailable(f"the server could not observe this request: {found['error']}")
    try:
        return Observation.model_validate(found)
    except ValidationError as exc:
        raise ObservationError("invalid observation: " + describe_validation_error(exc, "steer_serve.observe")) from exc


def observation_from_sse(lines: Iterable[str]) -> Observation:
    """The observation of a streamed response: the chunk that carries `steer_serve`, before [DONE]."""
    for line in lines:
        payload = line.removeprefix("data:").strip()
        if not line.startswith("data:") or payload == "[DONE]":
            continue
        chunk = json.loads(payload)
        if "steer_serve" in chunk:
            return parse_observation(chunk)
    raise ObservationError("the stream ended without a steer_serve chunk")
