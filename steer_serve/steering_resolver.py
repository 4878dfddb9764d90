"""Turn a validated SteeringSpec into concrete per-layer vectors for the served model.

Everything that depends on the model or the library is checked here, in the API process,
so the engine never sees a request it could fail on (an exception in a vLLM worker kills
the engine for everyone).
"""

from __future__ import annotations

import numpy as np

from steer_serve.model_shape import ModelShape
from steer_serve.resolved_steering import LayerAddition, ResolvedSteering, combine_additions
from steer_serve.settings import Settings
from steer_serve.steering_spec import AddIntervention, SteeringSpec
from steer_serve.vector_library import VectorLibrary


class SteeringError(ValueError):
    """A steering request that cannot be served; `param` locates the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class SteeringResolver:
    def __init__(self, shape: ModelShape, library: VectorLibrary, settings: Settings) -> None:
        self.shape = shape
        self.library = library
        self.settings = settings

    def resolve(self, spec: SteeringSpec) -> ResolvedSteering:
        if len(spec.interventions) > self.settings.max_interventions:
            raise SteeringError(
                f"{len(spec.interventions)} interventions given; at most {self.settings.max_interventions} allowed",
                "steering.interventions",
            )
        additions: list[LayerAddition] = []
        for index, intervention in enumerate(spec.interventions):
            additions += self._resolve_add(intervention, f"steering.interventions[{index}]")
        return combine_additions(additions)

    def _resolve_add(self, add: AddIntervention, where: str) -> list[LayerAddition]:
        directions = self._directions(add, where)
        scales = self._scales(add, sorted(directions), where)
        return [
            LayerAddition(layer, add.positions, np.float32(scales[layer]) * directions[layer])
            for layer in sorted(scales)
        ]

    def _directions(self, add: AddIntervention, where: str) -> dict[int, np.ndarray]:
        """Per-layer unit-less directions this intervention may use, before layer selection."""
        if isinstance(add.vector, str):
            try:
                entry = self.library.get(add.vector)
            except KeyError as exc:
                raise SteeringError(exc.args[0], f"{where}.vector") from None
            return dict(entry.vector.directions)
        if len(add.vector) != self.shape.hidden_size:
            raise SteeringError(
                f"inline vector has {len(add.vector)} values; the model's hidden size is {self.shape.hidden_size}",
                f"{where}.vector",
            )
        vector = np.asarray(add.vector, dtype=np.float32)
        return {layer: vector for layer in range(self.shape.num_layers)}

    def _scales(self, add: AddIntervention, available: list[int], where: str) -> dict[int, float]:
        """Map each steered layer to its scale, checking layers against the model and vector."""
        layers = self._layers(add, where)
        if layers is None:
            layers = available
        for layer in layers:
            if not 0 <= layer < self.shape.num_layers:
                raise SteeringError(
                    f"layer {layer} is out of range; the model has layers 0..{self.shape.num_layers - 1}",
                    f"{where}.layers",
                )
            if layer not in available:
                raise SteeringError(
                    f"vector {add.vector!r} has no direction for layer {layer} (it has layers {available})",
                    f"{where}.layers",
                )
        scales = add.scale if isinstance(add.scale, dict) else {str(layer): add.scale for layer in layers}
        for key, scale in scales.items():
            if abs(scale) > self.settings.max_abs_scale:
                raise SteeringError(
                    f"scale {scale} for layer {key} exceeds the limit |scale| <= {self.settings.max_abs_scale}",
                    f"{where}.scale",
                )
        return {int(key): float(scale) for key, scale in scales.items()}

    def _layers(self, add: AddIntervention, where: str) -> list[int] | None:
        """Layers named by `layers` and/or a per-layer scale; they must agree when both are given."""
        if not isinstance(add.scale, dict):
            if add.layers is None and not isinstance(add.vector, str):
                raise SteeringError("an inline vector needs `layers` (or a per-layer scale)", f"{where}.layers")
            return add.layers
        scale_layers = sorted(int(key) for key in add.scale)
        if len(set(scale_layers)) != len(scale_layers):
            raise SteeringError("per-layer scale names a layer twice", f"{where}.scale")
        if add.layers is not None and sorted(add.layers) != scale_layers:
            raise SteeringError(
                f"per-layer scale covers layers {scale_layers} but `layers` is {sorted(add.layers)}",
                f"{where}.scale",
            )
        return scale_layers
