"""Merge the pipeline stages' answers to an observation fetch into one result.

Under pipeline parallelism each stage's worker runs only its own decoder layers, so it holds the
probe values and captured vectors of those layers only (the others stay zero there). Every stage's
tensor-parallel rank 0 answers the fetch with its result, its `pp_rank` and the layers it owns
(`owned_layers`, the same ownership the capability report gives); the API takes each probe and
each capture layer from the stage that owns it. A layer no answering stage owns is an explicit
error, never an empty or zero result. Results without `owned_layers` (a worker that owns every
layer) pass through unchanged.
"""

from __future__ import annotations

from typing import Any

Result = dict[str, Any]
_STAGE_KEYS = ("pp_rank", "owned_layers")


def merge_stages(answers: list[Result]) -> Result:
    """One worker-format result from every stage's finished answer (at least one)."""
    errors = [a for a in answers if "error" in a]
    if errors:
        return {"status": "done", "error": errors[0]["error"]}
    base = min(answers, key=lambda a: a.get("pp_rank", 0))
    owner = {layer: a for a in answers for layer in a.get("owned_layers", ())}
    if not owner:  # no stage information: a single worker holding every layer
        return base
    observed = {p["layer"] for p in base["probes"]} | {c["layer"] for c in base["capture"] or ()}
    missing = sorted(observed - set(owner))
    if missing:
        return {"status": "done", "error": f"layer(s) {missing} are owned by no pipeline stage that answered "
                                           f"(stages {sorted(a.get('pp_rank', 0) for a in answers)})"}
    merged = {k: v for k, v in base.items() if k not in _STAGE_KEYS}
    merged["probes"] = [owner[p["layer"]]["probes"][k] for k, p in enumerate(base["probes"])]
    if base["capture"] is not None:
        merged["capture"] = [owner[c["layer"]]["capture"][i] for i, c in enumerate(base["capture"])]
    return merged
