"""A steering spec after resolution: concrete per-layer edits, ready for the engine.

This is what crosses the API -> engine boundary and what identifies a steering configuration:
two requests with the same resolved edits share a fingerprint, an engine slot and a
prefix-cache salt, however they were spelt (vector name or inline, one or several entries).

Order of application inside decoder layer L, per token:
  1. attention heads are scaled/masked before the attention output projection (`heads`);
  2. MoE router logits get -inf for disabled and +FORCE_LOGIT for forced experts (`experts`);
  3. the sum of all additions is added to the layer's output (`add`);
  4. projections are set along unit directions, in request order (`ablate` = set to 0, `clamp`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Positions = Literal["all", "prompt", "generated"]
PHASES: dict[str, tuple[int, ...]] = {"all": (0, 1), "prompt": (0,), "generated": (1,)}  # 0 prompt, 1 generated
# ablate/clamp/feature-clamp edits on one layer for one token phase, unless the server sets
# --steering-projections (the engine's tables have that many; ModelShape.projections_per_layer)
DEFAULT_PROJECTIONS_PER_LAYER = 2
FORCE_LOGIT = 100.0  # exp(-100) underflows float32 softmax weights of unforced experts to ~0


@dataclass(frozen=True)
class LayerAddition:
    """Add `vector` ([D] float32) to the output of decoder `layer` at the given token positions."""

    layer: int
    positions: Positions
    vector: np.ndarray


NO_THRESHOLD = float("-inf")


@dataclass(frozen=True)
class LayerProjection:
    """Set a read-out f of the layer output h to `value` by moving h along `direction` ([D]):

        f = g(s * (h . encoder) + offset),   g(x) = x * (x > threshold)
        h <- h + (value - f) * direction / s

    with s = sqrt(D) / |h| when `rescale` and 1 otherwise.
    - ablate / clamp: encoder = direction (unit), offset 0, no threshold: h + (value - h.d) d.
    - SAE feature clamp (SAELens's encoder for feature i): encoder = W_enc[:, i],
      direction = W_dec[i], offset = b_enc[i] - b_dec . W_enc[:, i] (when b_dec is applied to the
      input), threshold 0 (ReLU) or max(JumpReLU threshold, 0); `rescale` for
      constant_norm_rescale SAEs, whose reconstruction is scaled back by 1 / s.
    - TopK SAE feature clamp (`topk` = the SAE's k): as above with threshold 0, and the feature is
      also 0 unless its read is among the k largest pre-activations of the whole encoder, which
      the engine holds for that layer (--topk-clamp-saes; engine/topk_encoders.py).
    """

    layer: int
    positions: Positions
    direction: np.ndarray
    value: float
    encoder: np.ndarray | None = None  # None: the direction itself
    offset: float = 0.0
    threshold: float = NO_THRESHOLD
    rescale: bool = False
    topk: int = 0  # > 0: a TopK SAE's feature (the engine's resident encoder of this layer decides)

    @property
    def reads(self) -> np.ndarray:
        return self.direction if self.encoder is None else self.encoder


@dataclass(frozen=True)
class HeadScales:
    """Multiply each attention head's output slice by `scales` ([H], 1 = unchanged, 0 = masked)."""

    layer: int
    positions: Positions
    scales: np.ndarray


@dataclass(frozen=True)
class ExpertRouting:
    """Experts of one MoE layer that are never (disabled) or always (forced) routed."""

    layer: int
    positions: Positions
    disabled: tuple[int, ...]
    forced: tuple[int, ...]


@dataclass(frozen=True)
class Condition:
    """CAST's condition (steer_serve/request/conditions.py): the request's edits on `gated_layers`
    apply only when the prompt meets it. Read at the output of decoder `layer`, before that
    layer's own edits; `direction` is unit norm ([D])."""

    layer: int
    direction: np.ndarray
    threshold: float
    above: bool
    compare: str  # "mean" (over the prompt's tokens) or "last" (the prompt's last token)
    gated_layers: tuple[int, ...]


@dataclass(frozen=True)
class ResolvedSteering:
    additions: tuple[LayerAddition, ...] = ()
    projections: tuple[LayerProjection, ...] = ()
    head_scales: tuple[HeadScales, ...] = ()
    expert_routing: tuple[ExpertRouting, ...] = ()
    # |sum of additions| <= max_dose * |layer output| per token, applied by the engine (a caller's policy)
    max_dose: float | None = None
    condition: Condition | None = None  # CAST: edits on condition.gated_layers apply only when it holds

    @property
    def kinds(self) -> frozenset[str]:
        """Which kinds of edit this configuration uses: add, projection, heads, routing (and dose, a limit on
        add; topk, a TopK SAE feature clamp among the projections; rescale, a projection scaled by the
        stream's norm)."""
        present = {"add": self.additions, "projection": self.projections, "heads": self.head_scales,
                   "routing": self.expert_routing}
        kinds = {kind for kind, edits in present.items() if edits}
        kinds |= {"dose"} if self.max_dose is not None and self.additions else set()
        kinds |= {"topk"} if any(p.topk for p in self.projections) else set()
        kinds |= {"rescale"} if any(p.rescale for p in self.projections) else set()
        return frozenset(kinds | {"condition"} if self.condition is not None else kinds)

    @property
    def phase_dependent(self) -> bool:
        """True when some edit applies to prompt tokens only or generated tokens only.

        The same token then gets different edits as a prompt token and as a generated token,
        so its KV depends on the request's prompt length, not only on the tokens (prefix cache).
        """
        edits = (*self.additions, *self.projections, *self.head_scales, *self.expert_routing)
        return any(edit.positions != "all" for edit in edits)

    @property
    def fingerprint(self) -> str:
        """Content hash of every edit; stable across processes and spellings."""
        digest = hashlib.sha256(b"steer-serve/v1")
        for add in self.additions:
            _update(digest, f"|add|{add.layer}|{add.positions}|", add.vector)
        for proj in self.projections:
            _update(digest, f"|proj|{proj.layer}|{proj.positions}|{proj.value!r}|", proj.direction)
            if proj.encoder is not None or proj.rescale:  # SAE feature clamps; plain projections hash as before
                topk = f"topk{proj.topk}|" if proj.topk else ""  # only then, as for the dose
                _update(digest, f"|reads|{proj.offset!r}|{proj.threshold!r}|{proj.rescale}|{topk}", proj.reads)
        for heads in self.head_scales:
            _update(digest, f"|heads|{heads.layer}|{heads.positions}|", heads.scales)
        for route in self.expert_routing:
            digest.update(f"|experts|{route.layer}|{route.positions}|{route.disabled}|{route.forced}".encode())
        if self.max_dose is not None:  # only then: fingerprints without a dose limit stay as they were
            digest.update(f"|dose|{self.max_dose!r}".encode())
        if self.condition is not None:  # only then, as for the dose
            c = self.condition
            _update(digest, f"|when|{c.layer}|{c.threshold!r}|{c.above}|{c.compare}|{c.gated_layers}|", c.direction)
        return digest.hexdigest()[:32]


def _update(digest: "hashlib._Hash", label: str, values: np.ndarray) -> None:
    digest.update(label.encode())
    digest.update(np.ascontiguousarray(values, dtype="<f4").tobytes())


@dataclass
class SteeringBuilder:
    """Collects resolved edits and combines them canonically (sum, product, union)."""

    additions: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    projections: list[LayerProjection] = field(default_factory=list)
    head_scales: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    routing: dict[tuple[int, str], tuple[set[int], set[int]]] = field(default_factory=dict)

    def add(self, layer: int, positions: str, vector: np.ndarray) -> None:
        key = (layer, positions)
        self.additions[key] = self.additions[key] + vector if key in self.additions else vector.astype(np.float32)

    def scale_heads(self, layer: int, positions: str, scales: np.ndarray) -> None:
        key = (layer, positions)
        self.head_scales[key] = self.head_scales[key] * scales if key in self.head_scales else scales

    def route(self, layer: int, positions: str, disabled: set[int], forced: set[int]) -> None:
        old_disabled, old_forced = self.routing.get((layer, positions), (set(), set()))
        self.routing[(layer, positions)] = (old_disabled | disabled, old_forced | forced)

    def build(self) -> ResolvedSteering:
        return ResolvedSteering(
            additions=tuple(LayerAddition(l, p, v) for (l, p), v in sorted(self.additions.items())),  # type: ignore[arg-type]
            projections=tuple(self.projections),
            head_scales=tuple(HeadScales(l, p, s) for (l, p), s in sorted(self.head_scales.items())),  # type: ignore[arg-type]
            expert_routing=tuple(
                ExpertRouting(l, p, tuple(sorted(d)), tuple(sorted(f)))  # type: ignore[arg-type]
                for (l, p), (d, f) in sorted(self.routing.items())
            ),
        )
