"""Decide one steering configuration against one rule: None (allowed) or the Refusal naming the rule.

Checked on the request's own words (preset name, each intervention's kind, vector name or inline
values, scales, count, `observe` fields) and on the resolved edits (every layer any edit touches,
including a named vector's default layers and a preset's). A preset's interventions are checked
like the caller's own: naming a preset never widens what a caller may do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from steer_serve.policy.matching import any_match
from steer_serve.policy.model import NameRule, Rule
from steer_serve.request.resolved_steering import ResolvedSteering
from steer_serve.request.steering_spec import AddIntervention, ClampIntervention, HeadsIntervention

# name -> content hash of a library vector (None when the name is not in the library)
VectorHash = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Refusal:
    """`rule` is `<rule name>.<field>` (e.g. `research.inline_vectors`): the 403 and /metrics name it."""

    rule: str
    message: str
    param: str


def name_allowed(rule: NameRule, name: str, content_sha256: str | None = None) -> bool:
    return any_match(rule.allow, name, content_sha256) and not any_match(rule.deny, name, content_sha256)


def check_interventions(name: str, rule: Rule, preset: str | None, interventions: list[tuple[Any, str]],
                        vector_hash: VectorHash) -> Refusal | None:
    """The spec-level checks; `interventions` are (intervention, param path), the preset's first."""
    if preset is not None and not name_allowed(rule.presets, preset):
        return Refusal(f"{name}.presets", f"preset {preset!r} is not allowed for this caller", "steering.preset")
    if rule.max_interventions is not None and len(interventions) > rule.max_interventions:
        return Refusal(f"{name}.max_interventions", f"{len(interventions)} interventions; this caller may use at "
                       f"most {rule.max_interventions}", "steering.interventions")
    for intervention, where in interventions:
        refusal = _check_one(name, rule, intervention, where, vector_hash)
        if refusal is not None:
            return refusal
    return None


def _check_one(name: str, rule: Rule, intervention: Any, where: str, vector_hash: VectorHash) -> Refusal | None:
    if rule.kinds is not None and intervention.type not in rule.kinds:
        return Refusal(f"{name}.kinds", f"intervention type {intervention.type!r} is not allowed for this caller "
                       f"(allowed: {', '.join(rule.kinds) or 'none'})", f"{where}.type")
    vector = getattr(intervention, "vector", None)
    if isinstance(vector, list) and not rule.inline_vectors:
        return Refusal(f"{name}.inline_vectors", "inline vectors are not allowed for this caller; name a library "
                       "vector", f"{where}.vector")
    if isinstance(vector, str) and not name_allowed(rule.vectors, vector, vector_hash(vector)):
        return Refusal(f"{name}.vectors", f"vector {vector!r} is not allowed for this caller", f"{where}.vector")
    return _check_magnitudes(name, rule, intervention, where)


def _check_magnitudes(name: str, rule: Rule, intervention: Any, where: str) -> Refusal | None:
    """The same magnitudes as the server's --max-abs-scale: add scales, clamp values, head factors."""
    if rule.max_abs_scale is None:
        return None
    for value, field in _magnitudes(intervention):
        if abs(value) > rule.max_abs_scale:
            return Refusal(f"{name}.max_abs_scale", f"|{field}| = {abs(value)} exceeds this caller's limit "
                           f"{rule.max_abs_scale}", f"{where}.{field}")
    return None


def _magnitudes(intervention: Any) -> Iterable[tuple[float, str]]:
    if isinstance(intervention, AddIntervention):
        scales = intervention.scale.values() if isinstance(intervention.scale, dict) else [intervention.scale]
        yield from ((scale, "scale") for scale in scales)
    elif isinstance(intervention, ClampIntervention):
        yield intervention.value, "value"
    elif isinstance(intervention, HeadsIntervention):
        yield from ((factor, "scale") for factors in intervention.scale.values() for factor in factors.values())


def check_layers(name: str, rule: Rule, steering: ResolvedSteering) -> Refusal | None:
    """Every layer an edit touches must be allowed (named vectors default to all of their layers)."""
    allowed = rule.allowed_layers()
    if allowed is None:
        return None
    edits = (*steering.additions, *steering.projections, *steering.head_scales, *steering.expert_routing)
    bad = sorted({edit.layer for edit in edits} - allowed)
    if bad:
        return Refusal(f"{name}.layers", f"layer {bad[0]} may not be edited by this caller (allowed: "
                       f"{', '.join(map(str, rule.layers or []))})", "steering.interventions")
    return None


def check_observe(name: str, rule: Rule, request: dict[str, Any]) -> Refusal | None:
    """A request's `observe` fields (`probes`, `capture`) must each be allowed by the caller's rule."""
    if "observe" not in request:
        return None
    observe = request["observe"]
    fields = list(observe) if isinstance(observe, dict) and observe else ["observe"]
    bad = [field for field in fields if field not in rule.observe]
    if bad:
        return Refusal(f"{name}.observe", f"observe field {bad[0]!r} is not allowed for this caller", "observe")
    return None
