"""Conditional steering (CAST, IBM activation-steering): resolution rules and the condition's maths.

CAST (Lee et al., "Programming Refusal with Conditional Activation Steering"; IBM's
`activation_steering`, LeashLayer._process_single_condition) decides once per request, on the
prompt's forward pass, whether a behaviour edit applies:

    h   = mean of the prompt's hidden states at the condition layer ("mean", the default),
          or the last prompt token's ("last")
    P   = v v^T / (v . v)                          (projection on the condition vector v)
    sim = cos(h, tanh(P h))
    met = sim > threshold  (above=true; IBM's comparator "smaller": the threshold is smaller)
          sim < threshold  (above=false; IBM's default comparator "larger")

and holds the decision for the whole generation. Our layer L is the residual stream after decoder
layer L (where our edits at layer L go), i.e. the input of IBM's layer L+1.

`compare: "token"` is our per-token gate (not in IBM's code): every token, prompt and generated, is
compared on its own hidden state h_t at the condition layer, and the gated edits apply to exactly
the tokens whose sim(h_t) passes; nothing is held between tokens. The token's hidden state is known
only once the condition layer has run, so gated layers must be at or after it.

Restrictions of this server, refused with a 400 naming the field: one condition per request (all
`when` objects equal); a layer's edits are either all conditional or all unconditional (the engine
multiplies the request's whole edit on a gated layer by the decision); under pipeline parallelism
the condition layer and the layers it gates run on one stage (the decision lives on that stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from steer_serve.model_shape import ModelShape
from steer_serve.request.errors import SteeringError
from steer_serve.request.resolved_steering import Condition


def similarity(hidden: np.ndarray, direction: np.ndarray) -> float:
    """cos(h, tanh(P h)) for one hidden state h ([D]) and a condition vector of any norm ([D])."""
    h = hidden.astype(np.float64)
    unit = direction.astype(np.float64) / np.linalg.norm(direction)
    projected = np.tanh((h @ unit) * unit)  # tanh(P h), P = u u^T
    return float(h @ projected / (np.linalg.norm(h) * np.linalg.norm(projected)))


def condition_met(similarity_value: float, threshold: float, above: bool) -> bool:
    return similarity_value > threshold if above else similarity_value < threshold


@dataclass
class ConditionCollector:
    """Collects each residual intervention's layers and condition while a spec is resolved."""

    shape: ModelShape
    condition: Condition | None = None
    where: str = ""
    gated: dict[int, str] = field(default_factory=dict)  # layer -> param path of a conditional edit there
    plain: dict[int, str] = field(default_factory=dict)  # layer -> param path of an unconditional edit there

    def add(self, condition: Condition | None, layers: list[int], where: str) -> None:
        if condition is not None:
            self._same_condition(condition, where)
            self._reachable(condition, layers, where)
        mine, other = (self.gated, self.plain) if condition is not None else (self.plain, self.gated)
        for layer in layers:
            if layer in other:
                gated_at, plain_at = (where, other[layer]) if condition is not None else (other[layer], where)
                raise SteeringError(
                    f"layer {layer} has a conditional edit ({gated_at}) and an unconditional one ({plain_at}); "
                    "a layer's edits must be all conditional or all unconditional", f"{where}.when")
            mine.setdefault(layer, where)

    def _reachable(self, condition: Condition, layers: list[int], where: str) -> None:
        """The gated layers can see the decision: same pipeline stage, and not before the condition
        layer when every token decides for itself."""
        stage = self.shape.stage(condition.layer)
        for layer in layers:
            if self.shape.stage(layer) != stage:
                raise SteeringError(
                    f"layer {layer} runs on pipeline stage {self.shape.stage(layer)}, the condition layer "
                    f"{condition.layer} on stage {stage}: a condition gates only edits on its own stage",
                    f"{where}.when.layer")
            if condition.compare == "token" and layer < condition.layer:
                raise SteeringError(
                    f"layer {layer} comes before the condition layer {condition.layer}: with compare \"token\" a "
                    "token's own decision is known only after the condition layer, so gated layers must be "
                    f">= {condition.layer}", f"{where}.when.compare")

    def _same_condition(self, condition: Condition, where: str) -> None:
        if self.condition is None:
            self.condition, self.where = condition, where
            return
        mine, first = self.condition, condition
        same = (mine.layer, mine.threshold, mine.above, mine.compare) == (first.layer, first.threshold, first.above,
                                                                            first.compare)
        if not same or not np.array_equal(mine.direction, first.direction):
            raise SteeringError(f"a request may carry one condition; {where}.when differs from {self.where}.when",
                                f"{where}.when")

    def build(self) -> Condition | None:
        if self.condition is None:
            return None
        c = self.condition
        return Condition(c.layer, c.direction, c.threshold, c.above, c.compare, tuple(sorted(self.gated)))
