"""Turn a validated SteeringSpec into concrete per-layer edits for the served model.

Everything that depends on the model or the library is checked here, in the API process,
so the engine never sees a request it could fail on (an exception in a vLLM worker kills
the engine for everyone).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from steer_serve.model_shape import ModelShape
from steer_serve.request.conditions import ConditionCollector
from steer_serve.request.errors import SteeringError
from steer_serve.request.resolved_steering import (
    PHASES,
    Condition,
    LayerProjection,
    ResolvedSteering,
    SteeringBuilder,
)
from steer_serve.settings import Settings
from steer_serve.request.steering_spec import (
    AblateIntervention,
    AddIntervention,
    ClampIntervention,
    ExpertsIntervention,
    FeatureIntervention,
    HeadsIntervention,
    SteeringSpec,
    WhenCondition,
)

if TYPE_CHECKING:
    from steer_serve.library.presets import PresetLibrary
    from steer_serve.library.vector_library import VectorLibrary
    from steer_serve.library.sae_library import SAELibrary
    from steer_serve.library.sparse_autoencoder import SparseAutoencoder

_PHASE_NAMES = ("prompt", "generated")


class SteeringResolver:
    def __init__(self, shape: ModelShape, library: "VectorLibrary", settings: Settings,
                 presets: "PresetLibrary | None" = None, saes: "SAELibrary | None" = None) -> None:
        self.shape = shape
        self.library = library
        self.settings = settings
        self.presets = presets
        self.saes = saes

    def with_presets(self, presets: "PresetLibrary") -> "SteeringResolver":
        """This resolver, extended by `presets`. The presets themselves are checked by the resolver
        without them (`PresetLibrary(directory, check=resolver.resolve)`): a preset holds
        interventions only, never another preset."""
        return SteeringResolver(self.shape, self.library, self.settings, presets, self.saes)

    def resolve(self, spec: SteeringSpec) -> ResolvedSteering:
        expanded = self._expand(spec)
        if len(expanded) > self.settings.max_interventions:
            from_preset = f" ({len(expanded) - len(spec.interventions or [])} from preset {spec.preset!r})" if spec.preset else ""
            raise SteeringError(
                f"{len(expanded)} interventions given{from_preset}; at most {self.settings.max_interventions} allowed",
                "steering.interventions",
            )
        builder = SteeringBuilder()
        conditions = ConditionCollector(self.shape)
        conditional = any(getattr(intervention, "when", None) is not None for intervention, _ in expanded)
        with np.errstate(over="ignore"):  # overflow to inf is refused below (_check_float32), not warned about
            for intervention, where in expanded:
                if conditional and hasattr(intervention, "when"):  # residual edits: gated or not, per layer
                    conditions.add(self._condition(intervention.when, f"{where}.when"),
                                   self._edit_layers(intervention, where), where)
                if isinstance(intervention, AddIntervention):
                    self._add(intervention, where, builder)
                elif isinstance(intervention, (AblateIntervention, ClampIntervention)):
                    self._project(intervention, where, builder)
                elif isinstance(intervention, ExpertsIntervention):
                    self._experts(intervention, where, builder)
                elif isinstance(intervention, FeatureIntervention):
                    self._feature(intervention, where, builder)
                else:
                    self._heads(intervention, where, builder)
        self._check_projection_counts(builder)
        self._check_routing(builder)
        _check_float32(builder)
        return replace(builder.build(), condition=conditions.build())

    # ---- presets -----------------------------------------------------------------------
    def _expand(self, spec: SteeringSpec) -> list[tuple[Any, str]]:
        """(intervention, param path) pairs: the preset's interventions first, then the inline ones."""
        expanded: list[tuple[Any, str]] = []
        if spec.preset is not None:
            if self.presets is None:
                raise SteeringError("presets are not enabled on this server", "steering.preset")
            try:
                preset = self.presets.get(spec.preset)
            except KeyError as exc:
                raise SteeringError(exc.args[0], "steering.preset") from None
            expanded += [(intervention, f"steering.preset[{spec.preset}].interventions[{index}]")
                         for index, intervention in enumerate(preset.interventions)]
        expanded += [(intervention, f"steering.interventions[{index}]")
                     for index, intervention in enumerate(spec.interventions or [])]
        return expanded

    # ---- add ---------------------------------------------------------------------------
    def _add(self, add: AddIntervention, where: str, builder: SteeringBuilder) -> None:
        directions = self._directions(add, where)
        layers = self._layers(add, sorted(directions), where)
        scales = add.scale if isinstance(add.scale, dict) else {str(layer): add.scale for layer in layers}
        for key, scale in scales.items():
            self._check_magnitude(scale, f"scale {scale} for layer {key}", f"{where}.scale")
        for layer in layers:
            builder.add(layer, add.positions, np.float32(scales[str(layer)]) * directions[layer])

    # ---- ablate / clamp ----------------------------------------------------------------
    def _project(self, edit: AblateIntervention | ClampIntervention, where: str, builder: SteeringBuilder) -> None:
        directions = self._directions(edit, where)
        value = float(edit.value) if isinstance(edit, ClampIntervention) else 0.0
        self._check_magnitude(value, f"clamp value {value}", f"{where}.value")
        for layer in self._layers(edit, sorted(directions), where):
            norm = float(np.linalg.norm(directions[layer].astype(np.float64)))
            if norm == 0.0:
                raise SteeringError(f"the direction for layer {layer} has zero norm", f"{where}.vector")
            unit = (directions[layer].astype(np.float64) / norm).astype(np.float32)
            builder.projections.append(LayerProjection(layer, edit.positions, unit, value))

    def _check_projection_counts(self, builder: SteeringBuilder) -> None:
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for proj in builder.projections:
            for phase in PHASES[proj.positions]:
                counts[(proj.layer, phase)] += 1
        for (layer, phase), count in sorted(counts.items()):
            if count > self.shape.projections_per_layer:
                raise SteeringError(
                    f"{count} ablate/clamp/feature-clamp edits on layer {layer} for {_PHASE_NAMES[phase]} tokens; "
                    f"at most {self.shape.projections_per_layer} per layer on this server (--steering-projections)",
                    "steering.interventions",
                )

    # ---- SAE features --------------------------------------------------------------------
    def _feature(self, edit: FeatureIntervention, where: str, builder: SteeringBuilder) -> None:
        """`strength`: an addition of the decoder row; `clamp`: a projection read by the SAE's encoder."""
        sae = self._sae(edit.sae, f"{where}.sae")
        self._check_engine_applies("residual", sae.layer, "feature", f"{where}.sae")
        if not edit.feature < sae.d_sae:
            raise SteeringError(f"feature {edit.feature} does not exist in SAE {edit.sae!r} (features 0..{sae.d_sae - 1})",
                                f"{where}.feature")
        if edit.strength is not None:
            self._check_magnitude(float(edit.strength), f"strength {edit.strength}", f"{where}.strength")
            builder.add(sae.layer, edit.positions, np.float32(edit.strength) * sae.decoder_row(edit.feature, edit.normalize))
            return
        if sae.architecture == "topk":
            self._check_topk_encoder(edit.sae, sae, f"{where}.clamp")
        self._check_magnitude(float(edit.clamp), f"clamp value {edit.clamp}", f"{where}.clamp")
        builder.projections.append(feature_clamp(sae, edit.feature, float(edit.clamp), edit.positions))

    def _check_topk_encoder(self, name: str, sae: "SparseAutoencoder", where: str) -> None:
        """A TopK feature is active only among the k largest pre-activations of the whole encoder:
        the engine must hold that encoder (--topk-clamp-saes), and the same version of it."""
        held = self.shape.topk_encoders.get(name)
        if held is None:
            holds = ", ".join(sorted(self.shape.topk_encoders)) or "none"
            raise SteeringError(f"clamp on TopK SAE {name!r} needs its full encoder on the engine (a TopK feature's "
                                f"activation depends on every other feature); this server holds TopK encoders for: "
                                f"{holds} (steer-serve serve --topk-clamp-saes NAME), or use `strength`", where)
        if held != sae.sha256:
            raise SteeringError(f"the engine holds another version of TopK SAE {name!r} (loaded at server start); "
                                "restart the server to clamp this one", where)

    def _sae(self, name: str, where: str) -> "SparseAutoencoder":
        if self.saes is None:
            raise SteeringError("no SAE library is configured on this server (steer-serve serve --sae-dir DIR)", where)
        try:
            return self.saes.get(name).sae
        except KeyError as exc:
            raise SteeringError(exc.args[0], where) from None

    # ---- experts -----------------------------------------------------------------------
    def _experts(self, edit: ExpertsIntervention, where: str, builder: SteeringBuilder) -> None:
        if not self.shape.is_moe and not self.shape.refused.get("experts"):
            raise SteeringError(
                f"model {self.shape.model_id} has no Mixture-of-Experts layers; `experts` needs an MoE model", where
            )
        chosen = {name: self._expert_sets(mapping, f"{where}.{name}") for name, mapping in
                  (("disable", edit.disable), ("force", edit.force))}
        for layer in sorted(set(chosen["disable"]) | set(chosen["force"])):
            builder.route(layer, edit.positions, chosen["disable"].get(layer, set()), chosen["force"].get(layer, set()))

    def _expert_sets(self, mapping: dict[str, list[int]], where: str) -> dict[int, set[int]]:
        sets: dict[int, set[int]] = {}
        moe_layers = self.shape.experts_per_layer
        for key, experts in mapping.items():
            layer = int(key)
            self._check_engine_applies("experts", layer, "experts", where)
            if layer not in moe_layers:
                raise SteeringError(f"layer {layer} has no experts (MoE layers: {_ranges(sorted(moe_layers))})", where)
            bad = [e for e in experts if not 0 <= e < moe_layers[layer]]
            if bad:
                raise SteeringError(
                    f"expert {bad[0]} does not exist in layer {layer} (experts 0..{moe_layers[layer] - 1})", where
                )
            sets[layer] = sets.get(layer, set()) | set(experts)
        return sets

    def _check_routing(self, builder: SteeringBuilder) -> None:
        per_phase: dict[tuple[int, int], tuple[set[int], set[int]]] = defaultdict(lambda: (set(), set()))
        for (layer, positions), (disabled, forced) in builder.routing.items():
            for phase in PHASES[positions]:
                per_phase[(layer, phase)][0].update(disabled)
                per_phase[(layer, phase)][1].update(forced)
        top_k = self.shape.experts_per_token
        for (layer, phase), (disabled, forced) in sorted(per_phase.items()):
            self._check_layer_routing(layer, _PHASE_NAMES[phase], disabled, forced, top_k)

    def _check_layer_routing(self, layer: int, phase: str, disabled: set[int], forced: set[int], top_k: int) -> None:
        where = "steering.interventions"
        both = sorted(disabled & forced)
        if both:
            raise SteeringError(f"layer {layer}: expert {both[0]} is both disabled and forced ({phase} tokens)", where)
        if len(forced) > top_k:
            raise SteeringError(f"layer {layer}: {len(forced)} experts forced; the router picks only {top_k}", where)
        enabled = self.shape.experts_per_layer[layer] - len(disabled)
        if enabled < top_k:
            raise SteeringError(
                f"layer {layer}: only {enabled} experts left enabled; the router needs at least {top_k}", where
            )
        if layer in self.shape.expert_groups:
            self._check_groups(layer, disabled, forced, top_k)

    def _check_groups(self, layer: int, disabled: set[int], forced: set[int], top_k: int) -> None:
        """Grouped routing keeps `selected` of `groups` groups per token, then picks top-k inside them:
        every group must keep enough enabled experts that a disabled one is never needed (a group's
        score is the sum of its top-2 scores with a correction bias), and forced experts must fit in
        the kept groups."""
        where = "steering.interventions"
        groups, selected = self.shape.expert_groups[layer]
        size = self.shape.experts_per_layer[layer] // groups
        need = max(-(-top_k // selected), 2 if self.shape.routing.get(layer) == "sigmoid_bias_grouped_topk" else 1)
        for group in range(groups):
            left = size - len([e for e in disabled if e // size == group])
            if left < need:
                raise SteeringError(
                    f"layer {layer}: expert group {group} (experts {group * size}..{group * size + size - 1}) keeps "
                    f"{left} enabled experts; grouped routing needs at least {need} in every group", where)
        forced_groups = {e // size for e in forced}
        if len(forced_groups) > selected:
            raise SteeringError(f"layer {layer}: forced experts span {len(forced_groups)} expert groups; "
                                f"the router keeps only {selected} groups per token", where)

    # ---- heads -------------------------------------------------------------------------
    def _heads(self, edit: HeadsIntervention, where: str, builder: SteeringBuilder) -> None:
        factors: dict[int, dict[int, float]] = defaultdict(dict)
        for key, heads in edit.mask.items():
            for head in heads:
                factors[self._check_layer(int(key), f"{where}.mask")][head] = 0.0
        for key, scales in edit.scale.items():
            for head, factor in scales.items():
                self._check_magnitude(factor, f"head scale {factor}", f"{where}.scale")
                layer_factors = factors[self._check_layer(int(key), f"{where}.scale")]
                layer_factors[int(head)] = layer_factors.get(int(head), 1.0) * float(factor)
        for layer, by_head in sorted(factors.items()):
            self._check_engine_applies("heads", layer, "heads", where)
            bad = [h for h in by_head if not 0 <= h < self.shape.num_heads]
            if bad:
                raise SteeringError(
                    f"head {bad[0]} does not exist in layer {layer} (heads 0..{self.shape.num_heads - 1})", where
                )
            scales = np.ones(self.shape.num_heads, dtype=np.float32)
            for head, factor in by_head.items():
                scales[head] = factor
            builder.scale_heads(layer, edit.positions, scales)

    # ---- conditions (CAST) --------------------------------------------------------------
    def _condition(self, when: WhenCondition | None, where: str) -> Condition | None:
        if when is None:
            return None
        layer = self._check_layer(when.layer, f"{where}.layer")
        self._check_engine_applies("residual", layer, "when", f"{where}.layer")
        directions = self._directions(when, where)
        if layer not in directions:
            raise SteeringError(f"vector {when.vector!r} has no direction for layer {layer} (it has layers "
                                f"{sorted(directions)})", f"{where}.vector")
        norm = float(np.linalg.norm(directions[layer].astype(np.float64)))
        if norm == 0.0:
            raise SteeringError(f"the condition direction for layer {layer} has zero norm", f"{where}.vector")
        unit = (directions[layer].astype(np.float64) / norm).astype(np.float32)
        return Condition(layer, unit, float(when.threshold), when.above, when.compare, ())

    def _edit_layers(self, edit: Any, where: str) -> list[int]:
        """The layers whose residual stream this intervention edits."""
        if isinstance(edit, FeatureIntervention):
            return [self._sae(edit.sae, f"{where}.sae").layer]
        return self._layers(edit, sorted(self._directions(edit, where)), where)

    # ---- shared ------------------------------------------------------------------------
    def _directions(self, edit: AddIntervention | AblateIntervention | ClampIntervention | WhenCondition,
                    where: str) -> dict[int, np.ndarray]:
        """Per-layer directions this intervention may use, before layer selection."""
        if isinstance(edit.vector, str):
            try:
                entry = self.library.get(edit.vector)
            except KeyError as exc:
                raise SteeringError(exc.args[0], f"{where}.vector") from None
            return dict(entry.vector.directions)
        if len(edit.vector) != self.shape.hidden_size:
            raise SteeringError(
                f"inline vector has {len(edit.vector)} values; the model's hidden size is {self.shape.hidden_size}",
                f"{where}.vector",
            )
        with np.errstate(over="ignore"):
            vector = np.asarray(edit.vector, dtype=np.float32)
        if not np.isfinite(vector).all():
            bad = int(np.flatnonzero(~np.isfinite(vector))[0])
            raise SteeringError(f"vector[{bad}] = {edit.vector[bad]} does not fit in float32 (|x| <= {_F32_MAX:.4g})",
                                f"{where}.vector")
        return {layer: vector for layer in range(self.shape.num_layers)}

    def _layers(self, edit: AddIntervention | AblateIntervention | ClampIntervention, available: list[int],
                where: str) -> list[int]:
        """Layers named by `layers` and/or a per-layer scale, checked against the model and vector."""
        layers = self._requested_layers(edit, where)
        if layers is None:
            layers = available
        for layer in layers:
            self._check_layer(layer, f"{where}.layers")
            self._check_engine_applies("residual", layer, edit.type, f"{where}.layers")
            if layer not in available:
                raise SteeringError(
                    f"vector {edit.vector!r} has no direction for layer {layer} (it has layers {available})",
                    f"{where}.layers",
                )
        return sorted(layers)

    def _requested_layers(self, edit: AddIntervention | AblateIntervention | ClampIntervention,
                          where: str) -> list[int] | None:
        scale = getattr(edit, "scale", None)
        if not isinstance(scale, dict):
            if edit.layers is None and not isinstance(edit.vector, str):
                raise SteeringError("an inline vector needs `layers` (or a per-layer scale)", f"{where}.layers")
            return edit.layers
        scale_layers = sorted(int(key) for key in scale)
        if len(set(scale_layers)) != len(scale_layers):
            raise SteeringError("per-layer scale names a layer twice", f"{where}.scale")
        if edit.layers is not None and sorted(edit.layers) != scale_layers:
            raise SteeringError(
                f"per-layer scale covers layers {scale_layers} but `layers` is {sorted(edit.layers)}",
                f"{where}.scale",
            )
        return scale_layers

    def _check_layer(self, layer: int, where: str) -> int:
        if not 0 <= layer < self.shape.num_layers:
            raise SteeringError(
                f"layer {layer} is out of range; the model has layers 0..{self.shape.num_layers - 1}", where
            )
        return layer

    def _check_engine_applies(self, kind: str, layer: int, edit: str, where: str) -> None:
        """Refuse what the engine reported it cannot apply on this layer (never a silent no-op)."""
        reason = self.shape.refusal(kind, layer)
        if reason is not None:
            raise SteeringError(f"layer {layer} cannot take `{edit}` edits on this model: {reason}", where)

    def _check_magnitude(self, value: float, what: str, where: str) -> None:
        if abs(value) > self.settings.max_abs_scale:
            raise SteeringError(f"{what} exceeds the limit |scale| <= {self.settings.max_abs_scale}", where)


_F32_MAX = float(np.finfo(np.float32).max)


def feature_clamp(sae: "SparseAutoencoder", feature: int, value: float, positions: str) -> LayerProjection:
    """The engine's projection that sets SAE feature `feature` to `value` (see LayerProjection)."""
    encoder = sae.W_enc[:, feature].astype(np.float32)  # [D]
    offset = float(sae.b_enc[feature]) - float(sae.apply_b_dec_to_input) * float(sae.b_dec.astype(np.float64) @ encoder)
    threshold = 0.0 if sae.threshold is None else max(float(sae.threshold[feature]), 0.0)
    return LayerProjection(sae.layer, positions, sae.W_dec[feature].astype(np.float32), value, encoder=encoder,  # type: ignore[arg-type]
                           offset=offset, threshold=threshold, rescale=sae.normalize_activations == "constant_norm_rescale",
                           topk=int(sae.k or 0) if sae.architecture == "topk" else 0)


def _check_float32(builder: SteeringBuilder) -> None:
    """Refuse edits that overflow float32 once scaled and summed: the engine would add inf to the
    residual stream and the request would silently generate from NaN logits."""
    for (layer, _), vector in builder.additions.items():
        if not np.isfinite(vector).all():
            raise SteeringError(f"scale * vector on layer {layer} overflows float32 (|x| <= {_F32_MAX:.4g})",
                                "steering.interventions")


def _ranges(values: list[int]) -> str:
    return f"{values[0]}..{values[-1]}" if values == list(range(values[0], values[-1] + 1)) else str(values)
