"""Effect report: what a steering vector does to a behaviour, and what it costs in fluency.

For each scale, with `scale * direction[L]` added to the output of every steered decoder layer
L at every token (HF transformers forward hooks, as the server does with positions "all"):

- effect: over (prompt, target, opposite) triples, the mean of
  `logp(target | prompt) - logp(opposite | prompt)`, each the mean log-probability per
  continuation token (so length differences do not count). It is measured on text the vector
  never saw, and does not use the vector itself: a better score means the model, steered,
  finds the target continuation more likely relative to the opposite one;
- fluency cost: perplexity on a neutral text set, exp(total NLL / predicted tokens).

Prompts are rendered as one user turn with the model's chat template (plain text if it has
none); the continuation is the assistant's reply, tokenised on its own and appended.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from steer_serve.tools.activations import (
    ChatMessage, _load_jsonl, decoder_layers, file_sha256, layer_output, load_model, load_texts, render, token_ids,
)
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import SUFFIXES, read_vector

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class EffectTriple(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    target: str
    opposite: str


def load_triples(path: Path) -> list[EffectTriple]:
    return _load_jsonl(path, EffectTriple, "triple")


def find_vector(name_or_file: str, vector_dir: Path) -> tuple[str, SteeringVector]:
    """A vector file path, or a library name looked up in `vector_dir`."""
    path = Path(name_or_file)
    if not path.is_file():
        path = next((vector_dir / f"{name_or_file}{s}" for s in SUFFIXES if (vector_dir / f"{name_or_file}{s}").is_file()),
                    path)
    if not path.is_file():
        raise ValueError(f"no vector file {name_or_file!r} and no {name_or_file}.safetensors/.gguf in {vector_dir}")
    return path.stem, read_vector(path)


@contextmanager
def steered(model: PreTrainedModel, additions: dict[int, np.ndarray], scale: float) -> Iterator[None]:
    """Forward hooks adding `scale * additions[L]` to each layer L's output, at every token."""
    import torch

    handles = []
    for layer, direction in additions.items():
        delta = torch.from_numpy(np.asarray(direction, dtype=np.float32)) * scale

        def hook(_module: Any, _inputs: Any, output: Any, delta: torch.Tensor = delta) -> Any:
            if isinstance(output, tuple):
                return (layer_output(output) + delta, *output[1:])
            return output + delta

        handles.append(decoder_layers(model)[layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def continuation_logprob(model: PreTrainedModel, prompt: torch.Tensor, continuation: torch.Tensor) -> float:
    """Mean log-probability per token of `continuation` (1, m) after `prompt` (1, n)."""
    import torch

    ids = torch.cat([prompt, continuation], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].double()
    start = prompt.shape[1]
    predicted = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    return float(predicted.gather(1, continuation[0, :, None]).mean())


def perplexity(model: PreTrainedModel, texts: Sequence[torch.Tensor]) -> float:
    """exp(total next-token NLL / number of predicted tokens) over texts (each (1, n))."""
    import torch

    total, count = 0.0, 0
    for ids in texts:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0].double()
        nll = -torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])
        total += float(nll.sum())
        count += ids.shape[1] - 1
    return math.exp(total / count)


@dataclass(frozen=True)
class ScalePoint:
    scale: float
    effect: float  # mean over triples of logp(target) - logp(opposite), per token
    effect_sem: float  # standard error of that mean
    target_logprob: float
    opposite_logprob: float
    perplexity: float


@dataclass(frozen=True)
class EffectReport:
    vector: str
    model: str
    layers: list[int]
    triples: str
    triples_sha256: str
    neutral: str
    neutral_sha256: str
    points: list[ScalePoint]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def _prompt_text(prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    if getattr(tokenizer, "chat_template", None):
        return render([ChatMessage(role="user", content=prompt)], tokenizer)
    return prompt


def evaluate(model_dir: Path, name: str, vector: SteeringVector, scales: Sequence[float], layers: Sequence[int] | None,
             triples_path: Path, neutral_path: Path) -> EffectReport:
    import torch

    chosen = sorted(set(layers)) if layers else vector.layers
    missing = sorted(set(chosen) - set(vector.layers))
    if missing:
        raise ValueError(f"vector {name} has no direction for layers {missing} (it has {vector.layers})")
    model, tokenizer = load_model(model_dir)
    if vector.dim != model.config.hidden_size:
        raise ValueError(f"vector {name} has dimension {vector.dim}, the model's hidden size is {model.config.hidden_size}")
    if max(chosen) >= len(decoder_layers(model)):
        raise ValueError(f"layer {max(chosen)} is out of range for a model with {len(decoder_layers(model))} layers")
    encoded = [
        (token_ids(tokenizer, _prompt_text(t.prompt, tokenizer)), token_ids(tokenizer, t.target),
         token_ids(tokenizer, t.opposite))
        for t in load_triples(triples_path)
    ]
    neutral = [token_ids(tokenizer, render(n.content, tokenizer)) for n in load_texts(neutral_path)]
    additions = {layer: vector.directions[layer] for layer in chosen}
    points = []
    for scale in scales:
        with steered(model, additions, scale), torch.no_grad():
            target = np.array([continuation_logprob(model, p, t) for p, t, _ in encoded])
            opposite = np.array([continuation_logprob(model, p, o) for p, _, o in encoded])
            ppl = perplexity(model, neutral)
        gap = target - opposite
        sem = float(gap.std(ddof=1) / math.sqrt(len(gap))) if len(gap) > 1 else 0.0
        points.append(ScalePoint(float(scale), float(gap.mean()), sem, float(target.mean()), float(opposite.mean()), ppl))
    return EffectReport(name, Path(model_dir).name, chosen, triples_path.name, file_sha256(triples_path),
                        neutral_path.name, file_sha256(neutral_path), points)


def render_markdown(report: EffectReport) -> str:
    base = report.points[0]
    lines = [
        f"# Effect report: `{report.vector}` on {report.model}",
        "",
        f"Layers {','.join(map(str, report.layers))}; `scale * direction[L]` added to the output of each, at every token.",
        f"Effect: mean over `{report.triples}` (sha256 {report.triples_sha256[:12]}) of logp(target) - logp(opposite), "
        "per token, with its standard error. Fluency: perplexity on "
        f"`{report.neutral}` (sha256 {report.neutral_sha256[:12]}).",
        "",
        "| scale | effect (target - opposite) | ± s.e. | logp target | logp opposite | perplexity | perplexity ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report.points:
        lines.append(f"| {p.scale:g} | {p.effect:+.4f} | {p.effect_sem:.4f} | {p.target_logprob:.4f} "
                     f"| {p.opposite_logprob:.4f} | {p.perplexity:.3f} | {p.perplexity / base.perplexity:.3f} |")
    return "\n".join(lines) + "\n"


def render_png(report: EffectReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [p.scale for p in report.points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    left.errorbar(scales, [p.effect for p in report.points], yerr=[p.effect_sem for p in report.points],
                  marker="o", capsize=3, color="tab:blue")
    left.axhline(report.points[0].effect if report.points[0].scale == 0 else 0.0, color="grey", lw=0.8, ls="--")
    left.set(title="Behaviour effect", xlabel="scale", ylabel="logp(target) - logp(opposite), per token")
    right.plot(scales, [p.perplexity for p in report.points], marker="o", color="tab:red")
    right.set(title=f"Fluency cost (perplexity on {report.neutral})", xlabel="scale", ylabel="perplexity")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.suptitle(f"{report.vector} on {report.model}, layers {report.layers[0]}-{report.layers[-1]}"
                 if report.layers == list(range(report.layers[0], report.layers[-1] + 1))
                 else f"{report.vector} on {report.model}, layers {report.layers}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: EffectReport, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{report.vector}.md", out / f"{report.vector}.json", out / f"{report.vector}.png"]
    paths[0].write_text(render_markdown(report))
    paths[1].write_text(report.to_json())
    render_png(report, paths[2])
    return paths
