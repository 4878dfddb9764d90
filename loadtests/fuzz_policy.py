"""The restrictive policy the OpenAPI fuzz can run under (`fuzz_openapi --policy`), and an
independent judge of what it forbids.

The judge is written from the policy's words, not from steer_serve.policy, so a checker bug
that lets a forbidden body through shows up as a 2xx the judge calls forbidden. The probe
(a fixed inline-vector request) authenticates as the exempt `probe` caller; every fuzzed
request has no key and falls under `default`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PROBE_KEY = "fuzz-probe-key"
ALLOWED_VECTOR = "tiny_a"  # tiny_a has layers 0..3: naming it without `layers` touches layer 3
ALLOWED_KINDS = ("add", "heads")
ALLOWED_LAYERS = frozenset({0, 1, 2})
MAX_ABS_SCALE = 2.0
MAX_INTERVENTIONS = 2


def policy_yaml() -> str:
    probe_hash = hashlib.sha256(PROBE_KEY.encode()).hexdigest()
    return f"""# restrictive policy of the OpenAPI fuzz (loadtests/fuzz_policy.py)
default:
  inline_vectors: false
  kinds: [{", ".join(ALLOWED_KINDS)}]
  vectors: {{allow: [{ALLOWED_VECTOR}], deny: []}}
  presets: {{allow: [], deny: []}}
  layers: ["0-2"]
  max_abs_scale: {MAX_ABS_SCALE}
  max_dose: 0.5
  max_interventions: {MAX_INTERVENTIONS}
  observe: []
  override_experiments: false
callers:
  probe: {{keys_sha256: ["{probe_hash}"]}}
arms: {{}}
"""


def forbidden(body: Any) -> str | None:
    """Why the default rule forbids this completion body, or None when it allows it."""
    if not isinstance(body, dict):
        return None
    if "observe" in body:
        return "observe"
    steering = _steering(body)
    if not isinstance(steering, dict):
        return None
    if isinstance(body.get("user"), str) and body["user"]:
        return "override_experiments (steering with a `user` the experiment covers)"
    if steering.get("preset") is not None:
        return "presets"
    interventions = steering.get("interventions") or []
    if len(interventions) > MAX_INTERVENTIONS:
        return "max_interventions"
    return next(filter(None, (_forbidden_edit(edit) for edit in interventions)), None)


def _steering(body: dict) -> Any:
    if "steering" in body:
        return body["steering"]
    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict) and isinstance(xargs.get("steering"), str):
        try:
            return json.loads(xargs["steering"])
        except ValueError:
            return None
    return None


def _forbidden_edit(edit: dict) -> str | None:
    kind = edit.get("type")
    if kind not in ALLOWED_KINDS:
        return f"kinds ({kind})"
    if kind == "heads":
        scales = [f for per_layer in (edit.get("scale") or {}).values() for f in per_layer.values()]
        layers = {int(k) for k in (edit.get("mask") or {})} | {int(k) for k in (edit.get("scale") or {})}
    else:
        if isinstance(edit.get("vector"), list):
            return "inline_vectors"
        if edit.get("vector") != ALLOWED_VECTOR:
            return f"vectors ({edit.get('vector')!r})"
        scale = edit.get("scale", 1.0)
        scales = list(scale.values()) if isinstance(scale, dict) else [scale]
        layers = {int(k) for k in scale} if isinstance(scale, dict) else set(edit.get("layers") or range(4))
    if any(abs(s) > MAX_ABS_SCALE for s in scales):
        return "max_abs_scale"
    return f"layers ({sorted(layers - ALLOWED_LAYERS)})" if layers - ALLOWED_LAYERS else None
