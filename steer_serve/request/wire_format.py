"""Encoding of a ResolvedSteering into `SamplingParams.extra_args` and back.

vLLM carries `extra_args` from the API process to every worker via msgpack; values must be
flat, so the payload is one JSON string with base64 little-endian float32 arrays.
Only the API process writes it, after validation; clients cannot supply it (the gateway
refuses the key), so the worker can trust its structure.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import numpy as np

from steer_serve.request.resolved_steering import Condition, ExpertRouting, HeadScales, LayerAddition, LayerProjection, ResolvedSteering

EXTRA_ARGS_KEY = "steer_serve"
_VERSION = 2  # 2: additions under `add` (each with its `vector`), formerly `ops` (each with `add`)


def _pack(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def encode(steering: ResolvedSteering) -> str:
    payload: dict[str, Any] = {
        "v": _VERSION,
        "fingerprint": steering.fingerprint,
        "add": [{"layer": a.layer, "positions": a.positions, "vector": _pack(a.vector)} for a in steering.additions],
        "proj": [_projection(p) for p in steering.projections],
        "heads": [{"layer": h.layer, "positions": h.positions, "scales": _pack(h.scales)} for h in steering.head_scales],
        "experts": [
            {"layer": r.layer, "positions": r.positions, "disable": list(r.disabled), "force": list(r.forced)}
            for r in steering.expert_routing
        ],
        "dose": steering.max_dose,
    }
    if steering.condition is not None:
        c = steering.condition
        payload["when"] = {"layer": c.layer, "dir": _pack(c.direction), "threshold": c.threshold, "above": c.above,
                           "compare": c.compare, "gated": list(c.gated_layers)}
    return json.dumps(payload)


def decode(payload: str) -> tuple[str, ResolvedSteering]:
    """Return (fingerprint, steering). Raises ValueError/KeyError on a payload we did not write."""
    data = json.loads(payload)
    if data.get("v") != _VERSION:
        raise ValueError(f"unsupported steer_serve payload version {data.get('v')!r}")
    steering = ResolvedSteering(
        additions=tuple(LayerAddition(int(a["layer"]), a["positions"], _unpack(a["vector"])) for a in data["add"]),
        projections=tuple(_read_projection(p) for p in data.get("proj", [])),
        head_scales=tuple(HeadScales(int(h["layer"]), h["positions"], _unpack(h["scales"])) for h in data.get("heads", [])),
        expert_routing=tuple(
            ExpertRouting(int(r["layer"]), r["positions"], tuple(r["disable"]), tuple(r["force"]))
            for r in data.get("experts", [])
        ),
        max_dose=None if data.get("dose") is None else float(data["dose"]),
        condition=_read_condition(data["when"]) if "when" in data else None,
    )
    return str(data["fingerprint"]), steering


def _projection(p: LayerProjection) -> dict[str, Any]:
    entry: dict[str, Any] = {"layer": p.layer, "positions": p.positions, "dir": _pack(p.direction), "value": p.value}
    if p.encoder is not None or p.rescale:  # an SAE feature clamp
        entry |= {"enc": _pack(p.reads), "offset": p.offset, "threshold": p.threshold, "rescale": p.rescale,
                  "topk": p.topk}
    return entry


def _read_projection(p: dict[str, Any]) -> LayerProjection:
    base = LayerProjection(int(p["layer"]), p["positions"], _unpack(p["dir"]), float(p["value"]))
    if "enc" not in p:
        return base
    return replace(base, encoder=_unpack(p["enc"]), offset=float(p["offset"]), threshold=float(p["threshold"]),
                   rescale=bool(p["rescale"]), topk=int(p.get("topk", 0)))


def _read_condition(c: dict[str, Any]) -> Condition:
    return Condition(int(c["layer"]), _unpack(c["dir"]), float(c["threshold"]), bool(c["above"]), str(c["compare"]),
                     tuple(int(layer) for layer in c["gated"]))
