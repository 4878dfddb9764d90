"""A seeded random workload of completion requests with mixed steering, for isolation tests.

Each job has its own prompt length, output length and steering drawn from one generator, so a
failing seed can be replayed exactly. Steered jobs use distinct inline vectors: two jobs never
share a fingerprint (and so never share an engine slot or a prefix-cache salt by accident).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSITIONS = ("all", "prompt", "generated")
KINDS = ("none", "add", "add2", "ablate", "clamp", "heads", "combo")


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    max_tokens: int
    kind: str
    steering: dict | None

    def describe(self) -> str:
        return f"{self.kind} prompt={len(self.prompt)} max_tokens={self.max_tokens} steering={_summary(self.steering)}"


def random_jobs(seed: int, count: int, *, hidden: int, layers: int, heads: int,
                prompt_len: tuple[int, int], max_tokens: tuple[int, int]) -> list[Job]:
    """`count` jobs; lengths are inclusive ranges. About a quarter of the jobs are unsteered."""
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(count):
        length = int(rng.integers(prompt_len[0], prompt_len[1] + 1))
        prompt = [1] + rng.integers(3, 49000, size=length - 1).tolist()
        kind = str(rng.choice(KINDS, p=[0.25, 0.2, 0.1, 0.1, 0.1, 0.1, 0.15]))
        steering = _steering(rng, kind, hidden, layers, heads)
        jobs.append(Job(prompt, int(rng.integers(max_tokens[0], max_tokens[1] + 1)), kind, steering))
    return jobs


def _steering(rng: np.random.Generator, kind: str, hidden: int, layers: int, heads: int) -> dict | None:
    parts = {
        "none": [],
        "add": [_add(rng, hidden, layers)],
        "add2": [_add(rng, hidden, layers), _add(rng, hidden, layers)],
        "ablate": [_projection(rng, hidden, layers, None)],
        "clamp": [_projection(rng, hidden, layers, float(rng.uniform(-3, 3)))],
        "heads": [_heads(rng, layers, heads)],
        "combo": [_add(rng, hidden, layers), _projection(rng, hidden, layers, None), _heads(rng, layers, heads)],
    }[kind]
    return {"interventions": parts} if parts else None


def _layers(rng: np.random.Generator, layers: int) -> list[int]:
    return sorted(rng.choice(layers, size=int(rng.integers(1, 3)), replace=False).tolist())


def _positions(rng: np.random.Generator) -> str:
    return str(rng.choice(POSITIONS))


def _add(rng: np.random.Generator, hidden: int, layers: int) -> dict:
    vector = rng.standard_normal(hidden).astype(np.float32).tolist()
    scale = float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.6))
    return {"type": "add", "vector": vector, "layers": _layers(rng, layers), "scale": scale,
            "positions": _positions(rng)}


def _projection(rng: np.random.Generator, hidden: int, layers: int, value: float | None) -> dict:
    spec = {"type": "ablate" if value is None else "clamp", "vector": rng.standard_normal(hidden).tolist(),
            "layers": _layers(rng, layers), "positions": _positions(rng)}
    if value is not None:
        spec["value"] = value
    return spec


def _heads(rng: np.random.Generator, layers: int, heads: int) -> dict:
    layer = int(rng.integers(layers))
    head = int(rng.integers(heads))
    if rng.random() < 0.5:
        return {"type": "heads", "mask": {str(layer): [head]}, "positions": _positions(rng)}
    factor = float(rng.choice([0.0, 0.25, 2.0, 3.0]))  # far from 1, so the edit is visible
    return {"type": "heads", "scale": {str(layer): {str(head): factor}}, "positions": _positions(rng)}


def _summary(steering: dict | None) -> str:
    if steering is None:
        return "none"
    return ", ".join(f"{spec['type']}@{_spec_layers(spec)}/{spec['positions']}" for spec in steering["interventions"])


def _spec_layers(spec: dict) -> list[int]:
    if "layers" in spec:
        return spec["layers"]
    return sorted(int(layer) for layer in {**spec.get("mask", {}), **spec.get("scale", {})})
