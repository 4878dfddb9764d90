"""Per-token probe traces: ask a server to probe one prompt, and draw the projections as a PNG.

A probe is `NAME:VECTOR:LAYER`: VECTOR is a vector library name on the server, or a local vector
file (.safetensors/.gguf) whose direction at LAYER is sent inline. The prompt is tokenised here
(a chat prompt through the model's chat template, as extraction does) and sent as token ids, so
each point of the trace has a known token under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer_serve.tools.observation import Observation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from steer_serve.tools.observe_client import ObserveClient

MAX_TICK_LABELS = 96  # beyond this many positions the x axis shows numbers, not tokens


@dataclass(frozen=True)
class Trace:
    """A probed request: its observation and the token text at each position (if known)."""

    observation: Observation
    tokens: list[str] | None
    body: dict[str, Any]


def parse_probe(text: str) -> dict[str, Any]:
    """`NAME:VECTOR:LAYER` -> the probe object of the `observe` request field."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not all(parts) or not parts[2].lstrip("-").isdigit():
        raise ValueError(f"--probe {text!r}: expected NAME:VECTOR:LAYER, e.g. gloom:gloomy:12")
    name, vector, layer = parts[0], parts[1], int(parts[2])
    if Path(vector).suffix in (".safetensors", ".gguf"):
        from steer_serve.library.vector_formats import read_vector

        directions = read_vector(Path(vector)).directions
        if layer not in directions:
            raise ValueError(f"--probe {text!r}: {vector} has no direction at layer {layer} (has {sorted(directions)})")
        return {"name": name, "vector": [float(x) for x in directions[layer]], "layer": layer}
    return {"name": name, "vector": vector, "layer": layer}


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> list[int]:
    """The prompt as the model reads it: a user turn with the generation prompt, or the plain text."""
    from steer_serve.tools.activations import ChatMessage, render, token_id_list

    example = [ChatMessage(role="user", content=prompt)] if chat else prompt
    return token_id_list(tokenizer, render(example, tokenizer))


def probe_prompt(client: ObserveClient, tokenizer: PreTrainedTokenizerBase, prompt: str, probes: list[dict[str, Any]],
                 *, chat: bool, max_tokens: int, cosine: bool, steering: dict[str, Any] | None = None) -> Trace:
    """Greedy completion of `prompt` with `probes` (and `steering`, whose edits the probes see);
    token text for every observed position."""
    ids = prompt_ids(tokenizer, prompt, chat)
    observe = {"probes": [probe | {"cosine": cosine} for probe in probes]}
    extra = {"steering": steering} if steering is not None else {}
    body, observation = client.complete(ids, observe, max_tokens=max_tokens, logprobs=0,
                                        return_tokens_as_token_ids=True, **extra)
    generated = [int(t.removeprefix("token_id:")) for t in body["choices"][0]["logprobs"]["tokens"]]
    every = ids + generated
    return Trace(observation, [tokenizer.decode([every[p]]) for p in observation.positions], body)


def plot_trace(observation: Observation, out: Path, tokens: list[str] | None = None, title: str = "") -> Path:
    """One panel per probe: projection per position (cosine dashed on a right axis when present);
    generated positions shaded. Far outliers (the first token's attention-sink activation is often
    10x the rest) are drawn at the panel's edge with their value, so they do not flatten the trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not observation.probes:
        raise ValueError("the observation has no probes to plot")
    positions = observation.positions
    width = min(24.0, max(8.0, 0.22 * len(positions)))
    figure, axes = plt.subplots(len(observation.probes), 1, figsize=(width, 2.8 * len(observation.probes) + 1.4),
                                sharex=True, squeeze=False)
    legend: dict[str, Any] = {}
    for axis, probe in zip(axes[:, 0], observation.probes):
        _draw_probe(axis, positions, probe.projection, observation.num_prompt_tokens)
        axis.set_ylabel(f"{probe.name}\n(layer {probe.layer})")
        if probe.cosine is not None:
            twin = axis.twinx()
            twin.plot(positions, probe.cosine, linestyle="--", color="tab:green", label="cosine")
            twin.set_ylabel("cosine")
            legend |= dict(zip(*reversed(twin.get_legend_handles_labels())))
        legend |= dict(zip(*reversed(axis.get_legend_handles_labels())))
    figure.legend(handles=list(legend.values()), labels=list(legend), loc="upper right", ncol=len(legend),
                  fontsize="small")
    bottom = axes[-1, 0]
    if tokens is not None and len(positions) <= MAX_TICK_LABELS:
        bottom.set_xticks(positions, [repr(t)[1:-1] for t in tokens], rotation=90, fontsize="small")
    bottom.set_xlabel("token position (prompt, then generated)")
    figure.suptitle(title or "probe projection per token", x=0.02, ha="left")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _draw_probe(axis: Any, positions: list[int], values: list[float], num_prompt_tokens: int) -> None:
    import numpy as np

    axis.plot(positions, values, marker=".", color="tab:blue", label="projection")
    axis.axhline(0.0, color="grey", linewidth=0.6)
    axis.axvspan(num_prompt_tokens - 0.5, max(positions[-1], num_prompt_tokens) + 0.5,
                 color="tab:orange", alpha=0.12, label="generated")
    q1, q3 = np.percentile(values, [25, 75])  # Tukey's far-out fences: 3 interquartile ranges
    low, high = max(min(values), q1 - 3 * (q3 - q1)), min(max(values), q3 + 3 * (q3 - q1))
    pad = 0.05 * max(high - low, 1e-6)
    bottom, top = low - pad, high + pad
    for position, value in zip(positions, values):
        if not bottom <= value <= top:
            edge = top if value > top else bottom
            axis.annotate(f"{value:.4g}", (position, edge), xytext=(4, -10 if value > top else 4),
                          textcoords="offset points", fontsize="x-small", color="tab:red")
            axis.plot([position], [edge], marker="^" if value > top else "v", color="tab:red")
    axis.set_ylim(bottom, top)
