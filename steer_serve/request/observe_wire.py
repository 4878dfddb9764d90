"""The observation request as it travels to the workers, and the result as it comes back.

To the workers: one flat JSON string in `SamplingParams.extra_args[EXTRA_ARGS_KEY]` (msgpack
needs flat values), written only by the API gateway (clients cannot supply the key).
Back: the worker's answer to the fetch RPC, a plain dict (msgpack), turned into the public
`steer_serve.observe` response object by `response_object`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from steer_serve.request.observe_spec import Capture, Probe, ResolvedObservation

EXTRA_ARGS_KEY = "steer_serve_observe"
_VERSION = 1


def pack(values: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def encode(observation_id: str, observation: ResolvedObservation) -> str:
    capture = observation.capture
    return json.dumps({
        "v": _VERSION,
        "id": observation_id,
        "probes": [{"name": p.name, "layer": p.layer, "dir": pack(p.direction), "cosine": p.cosine,
                    "report": p.report} for p in observation.probes],
        "capture": None if capture is None else {
            "layers": list(capture.layers),
            "positions": capture.positions if isinstance(capture.positions, str) else list(capture.positions)},
    })


def decode(payload: str) -> tuple[str, ResolvedObservation]:
    """(observation id, observation); raises ValueError/KeyError/TypeError on a payload we did not write."""
    data = json.loads(payload)
    if data.get("v") != _VERSION:
        raise ValueError(f"unsupported observe payload version {data.get('v')!r}")
    probes = tuple(Probe(str(p["name"]), int(p["layer"]), unpack(p["dir"]), bool(p["cosine"]), bool(p["report"]))
                   for p in data["probes"])
    raw = data["capture"]
    capture = None if raw is None else Capture(
        tuple(int(layer) for layer in raw["layers"]),
        raw["positions"] if isinstance(raw["positions"], str) else tuple(int(i) for i in raw["positions"]))
    return str(data["id"]), ResolvedObservation(probes, capture)


def response_object(result: dict[str, Any]) -> dict[str, Any]:
    """The public `observe` object from a worker's result (see the README for the shape)."""
    if "error" in result:
        return {"error": result["error"]}
    first, computed = int(result["first_position"]), int(result["num_computed_tokens"])
    probes = []
    for probe in result["probes"]:
        if not probe["report"]:
            continue
        projection = unpack(probe["projection"])[first:computed]
        entry: dict[str, Any] = {"name": probe["name"], "layer": probe["layer"], "projection": projection.tolist()}
        if probe["cosine"]:
            norm = np.maximum(unpack(probe["norm"])[first:computed], 1e-12)
            entry["cosine"] = (projection / norm).tolist()
        probes.append(entry)
    observed: dict[str, Any] = {"num_prompt_tokens": int(result["num_prompt_tokens"]),
                                "positions": list(range(first, computed)), "probes": probes}
    if result.get("capture") is not None:
        observed["capture"] = [{"layer": c["layer"], "positions": c["positions"],
                                "shape": [len(c["positions"]), int(result["hidden_size"])], "dtype": "float32",
                                "data": c["data"], "truncated": c["truncated"]} for c in result["capture"]]
    return observed


def probe_means(result: dict[str, Any]) -> dict[str, float]:
    """Mean projection over the computed positions (prefix-cache hits have none) of each server probe
    (report=False) -> /metrics."""
    if "error" in result:
        return {}
    first, computed = int(result["first_position"]), int(result["num_computed_tokens"])
    means = {}
    for probe in result["probes"]:
        values = unpack(probe["projection"])[first:computed]
        if not probe["report"] and values.size:
            means[probe["name"]] = float(values.mean())
    return means
