"""Conditional-steering (CAST `when`) cases for the e2e tests: a condition whose threshold lies
between two prompts' similarities as the HF reference computes them, so one prompt is steered and
the other is not, and the matching HF reference edits."""

from __future__ import annotations

import numpy as np
import torch

from harness.hf_reference import Addition, Condition, Edit, HFReference, Projection


def threshold_between(reference: HFReference, prompts: list[list[int]], condition: Condition,
                      edits: list[Edit] = (), min_gap: float = 1e-3) -> float:
    """The midpoint of the two prompts' similarities (the condition sees `edits`, which are not gated)."""
    sims = []
    for prompt in prompts:
        reference.greedy(prompt, 1, edits, condition)
        sims.append(reference.condition_similarity)
    assert abs(sims[0] - sims[1]) > min_gap, f"prompts too close to separate: similarities {sims}"
    return float(np.mean(sims))


def gated_steering(cond: np.ndarray, layer: int, threshold: float, gated: list[dict], plain: list[dict] = (),
                   above: bool = True, compare: str = "mean") -> dict:
    when = {"vector": cond.tolist(), "layer": layer, "threshold": threshold, "above": above, "compare": compare}
    return {"interventions": [*plain, *({**edit, "when": when} for edit in gated)]}


def reference_edit(edit: dict) -> Edit:
    """The HF reference's edit for an inline add / ablate intervention on one layer."""
    vector = torch.tensor(edit["vector"], dtype=torch.float32)
    (layer,) = edit["layers"]
    positions = edit.get("positions", "all")
    if edit["type"] == "add":
        return Addition(layer, edit.get("scale", 1.0) * vector, positions)
    return Projection(layer, vector / vector.norm(), 0.0, positions)
