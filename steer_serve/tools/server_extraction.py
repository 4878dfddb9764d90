"""Vector extraction on a running server: activations from `observe.capture` instead of a local HF copy.

Each example is rendered and tokenised locally exactly as the HF path does (`render`, then
`token_id_list`), and those ids are sent as the prompt of a one-token completion; the capture of
the prompt positions is the residual stream after each layer, the same point the HF hooks read.
The statistics and the metadata are the HF path's own (`build_vector`), so for the same model and
dataset both paths write the same vector up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from steer_serve.library.steering_vector import SteeringVector
from steer_serve.request.observe_spec import CAPTURE_CAP, MAX_CAPTURE_LAYERS  # the server's limits per request
from steer_serve.tools.activations import Example, render, token_id_list, validate_layers
from steer_serve.tools.extraction import ExtractionSpec, build_vector
from steer_serve.tools.observe_client import ObserveClient



def capture_requests(num_tokens: int, layers: list[int], position: str) -> list[tuple[list[int], list[int]]]:
    """(layers, positions) of each request needed for one prompt of `num_tokens`, within the server's caps.
    `last` reads the last prompt token; `mean` every prompt token (the mean is taken here)."""
    wanted = [num_tokens - 1] if position == "last" else list(range(num_tokens))
    plan = []
    for start in range(0, len(layers), MAX_CAPTURE_LAYERS):
        group = layers[start:start + MAX_CAPTURE_LAYERS]
        per_request = CAPTURE_CAP // len(group)
        plan += [(group, wanted[p:p + per_request]) for p in range(0, len(wanted), per_request)]
    return plan


def reduce_rows(rows: np.ndarray, position: str) -> np.ndarray:
    """One float64 vector per example from its (positions, hidden) rows: the last row, or the mean."""
    return rows[-1].astype(np.float64) if position == "last" else rows.astype(np.float64).mean(axis=0)


def collect_from_server(client: ObserveClient, prompts: list[list[int]], layers: list[int], position: str,
                        hidden_size: int) -> dict[int, np.ndarray]:
    """Per layer a float64 (len(prompts), hidden) matrix, requests running `client.concurrency` at a time."""
    jobs = [(index, group, positions) for index, ids in enumerate(prompts)
            for group, positions in capture_requests(len(ids), layers, position)]

    def run(job: tuple[int, list[int], list[int]]) -> dict[int, np.ndarray]:
        index, group, positions = job
        _, observation = client.complete(prompts[index], {"capture": {"layers": group, "positions": positions}})
        found = {layer: observation.captured(layer) for layer in group}
        for layer, (got, rows) in found.items():
            if got != positions or rows.shape[1] != hidden_size:
                raise ValueError(f"layer {layer}: the server captured positions {got[:8]}... of width "
                                 f"{rows.shape[1]}, asked for {positions[:8]}... of width {hidden_size} "
                                 "(does it serve the model of --model?)")
        return {layer: rows for layer, (_, rows) in found.items()}

    parts = client.map(run, jobs)  # [job] -> {layer: (positions in this request, hidden)}
    gathered: dict[int, list[list[np.ndarray]]] = {layer: [[] for _ in prompts] for layer in layers}
    for (index, group, _), part in zip(jobs, parts):
        for layer in group:
            gathered[layer][index].append(part[layer])
    return {layer: np.stack([reduce_rows(np.concatenate(pieces), position) for pieces in per_prompt])
            for layer, per_prompt in gathered.items()}


def extract_via_server(client: ObserveClient, model_dir: Path, spec: ExtractionSpec) -> SteeringVector:
    """`extract` with activations from the server; `model_dir` supplies the tokenizer, chat template and
    config (layer count, width) of the model the server serves."""
    from transformers import AutoConfig, AutoTokenizer

    spec.check()
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chosen = validate_layers(spec.layers, spec.position, config.num_hidden_layers)

    def collect(examples: Sequence[Example]) -> dict[int, np.ndarray]:
        prompts = [token_id_list(tokenizer, render(example, tokenizer)) for example in examples]
        return collect_from_server(client, prompts, chosen, spec.position, config.hidden_size)

    return build_vector(collect, spec, chosen, model_name=Path(model_dir).name, hidden_size=config.hidden_size)
