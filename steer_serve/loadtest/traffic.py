"""The traffic mix made concrete: one planned request per arrival, with its class, prompt,
output length and the body fields that steer it (`steering`, `user`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steer_serve.loadtest.scenario import Distribution, Fixed, Length, Normal, RandomVectors, Scenario, TrafficClass

Prompt = list[int] | str | list[dict[str, Any]]  # token ids, text, or chat messages


@dataclass(frozen=True)
class PlannedRequest:
    request_id: str
    traffic_class: str
    prompt: Prompt
    prompt_len: int  # token ids: exact; text: the tokenizer's count (the server's usage replaces it)
    output_len: int
    overrides: dict[str, Any] | None  # merged into the request body by the benchmark

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list) and bool(self.prompt) and isinstance(self.prompt[0], dict)


@dataclass(frozen=True)
class FilePrompt:
    prompt: str | list[dict[str, Any]]
    tokens: int


def draw_lengths(length: Length, n: int, rng: np.random.Generator) -> list[int]:
    spec: Distribution = Fixed(dist="fixed", value=length) if isinstance(length, int) else length
    if isinstance(spec, Fixed):
        values = np.full(n, spec.value)
    elif isinstance(spec, Normal):
        values = np.clip(np.rint(rng.normal(spec.mean, spec.std, n)), spec.min, spec.max or np.inf)
    else:
        values = rng.integers(spec.min, spec.max + 1, n)
    return [int(v) for v in values]


def read_prompt_file(path: Path, count_tokens) -> list[FilePrompt]:
    """JSONL lines {"prompt": str} or {"messages": [...]}, all of one kind (one endpoint per run)."""
    prompts: list[FilePrompt] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not ({"prompt", "messages"} & row.keys()):
            raise ValueError(f"{path}:{number}: each line needs `prompt` (text) or `messages` (chat)")
        text = row.get("prompt", row.get("messages"))
        prompts.append(FilePrompt(text, count_tokens(text)))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    if len({isinstance(p.prompt, str) for p in prompts}) > 1:
        raise ValueError(f"{path}: mix of `prompt` and `messages` lines; use one kind per file")
    return prompts


def unit_vectors(spec: RandomVectors, dim: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((spec.count, dim))  # [K, D]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.round(6).tolist()


class ClassBodies:
    """The steering and user fields of one class's successive requests."""

    def __init__(self, traffic: TrafficClass, dim: int | None, seed: int) -> None:
        self.traffic = traffic
        self.sent = 0
        self.vectors = unit_vectors(traffic.random_vectors, dim, seed) if traffic.random_vectors else None
        self.rng = np.random.default_rng(seed + 1)

    def next_overrides(self) -> dict[str, Any] | None:
        overrides: dict[str, Any] = {}
        if self.traffic.steering is not None:
            overrides["steering"] = self.traffic.steering
        elif self.vectors is not None:
            spec = self.traffic.random_vectors
            vector = self.vectors[self.sent % len(self.vectors)]
            overrides["steering"] = {"interventions": [
                {"type": "add", "vector": vector, "layers": spec.layers, "scale": spec.scale}]}
        if self.traffic.users is not None:
            overrides["user"] = f"{self.traffic.users.prefix}{int(self.rng.integers(self.traffic.users.pool))}"
        self.sent += 1
        return overrides or None


def plan_requests(scenario: Scenario, n: int, run_seed: int, run_id: str, *, vocab_size: int,
                  dim: int | None, file_prompts: list[FilePrompt] | None) -> list[PlannedRequest]:
    """`n` requests: classes drawn by weight, prompts and lengths drawn from the scenario, all
    from `run_seed` (every run of a sweep gets fresh prompts, so none reuses another's prefix cache)."""
    rng = np.random.default_rng(run_seed)
    weights = np.array([c.weight for c in scenario.traffic])
    classes = rng.choice(len(scenario.traffic), size=n, p=weights / weights.sum())
    bodies = [ClassBodies(c, dim, run_seed * 1000 + i) for i, c in enumerate(scenario.traffic)]
    output_lens = draw_lengths(scenario.prompts.output_tokens, n, rng)
    if file_prompts is None:
        input_lens = draw_lengths(scenario.prompts.input_tokens, n, rng)
        prompts = [(rng.integers(100, vocab_size - 100, size=k).tolist(), k) for k in input_lens]
    else:
        picks = rng.integers(len(file_prompts), size=n)
        prompts = [(file_prompts[j].prompt, file_prompts[j].tokens) for j in picks]
    return [PlannedRequest(f"{run_id}-{i}", scenario.traffic[c].name, prompt, length, output_lens[i],
                           bodies[c].next_overrides())
            for i, (c, (prompt, length)) in enumerate(zip(classes, prompts))]
