"""Encoding of a ResolvedSteering into `SamplingParams.extra_args` and back.

vLLM carries `extra_args` from the API process to every worker via msgpack; values must be
flat, so the payload is one JSON string with base64 little-endian float32 vectors.
Only the API process writes it, after validation; clients cannot supply it (the gateway
refuses the key), so the worker can trust its structure.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from steer_serve.resolved_steering import LayerAddition, ResolvedSteering

EXTRA_ARGS_KEY = "steer_serve"
_VERSION = 1


def encode(steering: ResolvedSteering) -> str:
    ops = [
        {
            "layer": add.layer,
            "positions": add.positions,
            "add": base64.b64encode(np.ascontiguousarray(add.vector, dtype="<f4").tobytes()).decode(),
        }
        for add in steering.additions
    ]
    return json.dumps({"v": _VERSION, "fingerprint": steering.fingerprint, "ops": ops})


def decode(payload: str) -> tuple[str, ResolvedSteering]:
    """Return (fingerprint, steering). Raises ValueError on a payload we did not write."""
    data = json.loads(payload)
    if data.get("v") != _VERSION:
        raise ValueError(f"unsupported steer_serve payload version {data.get('v')!r}")
    additions = tuple(
        LayerAddition(
            layer=int(op["layer"]),
            positions=op["positions"],
            vector=np.frombuffer(base64.b64decode(op["add"]), dtype="<f4").astype(np.float32),
        )
        for op in data["ops"]
    )
    return str(data["fingerprint"]), ResolvedSteering(additions)
