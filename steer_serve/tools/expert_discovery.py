"""Find the MoE experts a behaviour routes to, and write a preset that disables (or forces) them.

The idea of "Mixture of Tunable Experts" (fTRI): run a behaviour set and a neutral set through
the model, count per layer how often each expert is among the router's top-k selections per
token, and rank (layer, expert) by the difference in routing frequency
`freq_behaviour - freq_neutral`, where freq = selections / tokens (a probability in [0, 1];
the frequencies of a layer sum to top-k). Every token of every rendered text counts.

The selections are read from HF's own router (`model.model.layers[i].mlp.gate`), whose forward
returns `(router_logits, router_scores, router_indices)` in transformers 5 (Mixtral, Qwen2-MoE,
OLMoE); a router returning bare logits is handled by taking their top-k (softmax keeps order).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steer_serve.tools.activations import decoder_layers, file_sha256, load_model, load_texts, render, token_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MODES = ("disable", "force")


@dataclass(frozen=True)
class Router:
    module: Any  # the HF router (torch.nn.Module)
    num_experts: int
    top_k: int


@dataclass(frozen=True)
class ExpertScore:
    layer: int
    expert: int
    behaviour_freq: float
    neutral_freq: float

    @property
    def difference(self) -> float:
        return self.behaviour_freq - self.neutral_freq


@dataclass(frozen=True)
class Discovery:
    ranking: list[ExpertScore]  # every (layer, expert), largest difference first
    selected: dict[int, list[int]]  # layer -> experts written into the preset
    preset: dict[str, Any]
    behaviour_tokens: int
    neutral_tokens: int


def moe_routers(model: PreTrainedModel) -> dict[int, Router]:
    """Decoder layer -> its router; a ValueError for a dense model."""
    routers = {}
    for index, layer in enumerate(decoder_layers(model)):
        gate = getattr(getattr(layer, "mlp", None), "gate", None)
        weight = getattr(gate, "weight", None)
        if gate is None or weight is None or weight.ndim != 2:
            continue
        top_k = getattr(gate, "top_k", None) or getattr(model.config, "num_experts_per_tok", None)
        routers[index] = Router(gate, int(weight.shape[0]), int(top_k))
    if not routers:
        raise ValueError(
            f"{type(model).__name__} is a dense model (no router at model.layers[i].mlp.gate); "
            "expert discovery needs a Mixture-of-Experts model (Mixtral, Qwen2-MoE, OLMoE)"
        )
    return routers


def selected_experts(output: Any, top_k: int) -> torch.Tensor:
    """(tokens, top_k) expert ids from a router's forward output."""
    import torch

    if isinstance(output, tuple) and len(output) >= 3:
        return output[2]
    logits = output[0] if isinstance(output, tuple) else output
    return torch.topk(logits, top_k, dim=-1).indices


def count_routing(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], routers: dict[int, Router]
) -> tuple[dict[int, np.ndarray], int]:
    """Per MoE layer, how many times each expert was selected over all tokens; and the token count."""
    import torch

    counts = {layer: np.zeros(r.num_experts, dtype=np.int64) for layer, r in routers.items()}

    def hook_for(layer: int, router: Router):  # noqa: ANN202
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            ids = selected_experts(output, router.top_k).reshape(-1).cpu().numpy()
            counts[layer] += np.bincount(ids, minlength=router.num_experts)

        return hook

    handles = [r.module.register_forward_hook(hook_for(layer, r)) for layer, r in routers.items()]
    tokens = 0
    try:
        for text in texts:
            ids = token_ids(tokenizer, text)
            tokens += ids.shape[1]
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return counts, tokens


def rank_experts(
    behaviour: dict[int, np.ndarray], behaviour_tokens: int, neutral: dict[int, np.ndarray], neutral_tokens: int
) -> list[ExpertScore]:
    """All (layer, expert) by routing-frequency difference, largest first; ties by layer, expert."""
    scores = [
        ExpertScore(layer, expert, behaviour[layer][expert] / behaviour_tokens, neutral[layer][expert] / neutral_tokens)
        for layer in sorted(behaviour)
        for expert in range(len(behaviour[layer]))
    ]
    return sorted(scores, key=lambda s: (-s.difference, s.layer, s.expert))


def select(ranking: Sequence[ExpertScore], k: int, mode: str, routers: dict[int, Router]) -> dict[int, list[int]]:
    """The top k experts with a positive difference that a preset may name: the server refuses
    fewer than top-k enabled experts in a layer (disable) or more forced than top-k (force)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    chosen: dict[int, list[int]] = {}
    for score in ranking:
        if sum(map(len, chosen.values())) == k or score.difference <= 0:
            break
        router = routers[score.layer]
        cap = router.num_experts - router.top_k if mode == "disable" else router.top_k
        if len(chosen.get(score.layer, [])) < cap:
            chosen.setdefault(score.layer, []).append(score.expert)
    return {layer: sorted(experts) for layer, experts in sorted(chosen.items())}


def build_preset(name: str, selected: dict[int, list[int]], mode: str, description: str) -> dict[str, Any]:
    """A preset file body (`steer_serve.library.presets` schema)."""
    return {"name": name, "description": description,
            "interventions": [{"type": "experts", mode: {str(layer): e for layer, e in selected.items()}}]}


def ranking_markdown(discovery: Discovery, limit: int = 20) -> str:
    chosen = {(layer, e) for layer, experts in discovery.selected.items() for e in experts}
    lines = [
        f"Routing frequency per token (behaviour: {discovery.behaviour_tokens} tokens, "
        f"neutral: {discovery.neutral_tokens} tokens); top {min(limit, len(discovery.ranking))} of {len(discovery.ranking)}.",
        "",
        "| rank | layer | expert | behaviour freq | neutral freq | difference | in preset |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for rank, s in enumerate(discovery.ranking[:limit], start=1):
        mark = "yes" if (s.layer, s.expert) in chosen else ""
        lines.append(f"| {rank} | {s.layer} | {s.expert} | {s.behaviour_freq:.4f} | {s.neutral_freq:.4f} "
                     f"| {s.difference:+.4f} | {mark} |")
    return "\n".join(lines) + "\n"


def discover(model_dir: Path, behaviour_path: Path, neutral_path: Path, k: int, mode: str = "disable",
             name: str = "experts") -> Discovery:
    """Rank experts for a behaviour set against a neutral set and build the preset."""
    if k < 1:
        raise ValueError("--top-k must be at least 1")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    model, tokenizer = load_model(model_dir)
    routers = moe_routers(model)
    texts = {path: [render(t.content, tokenizer) for t in load_texts(path)] for path in (behaviour_path, neutral_path)}
    behaviour, behaviour_tokens = count_routing(model, tokenizer, texts[behaviour_path], routers)
    neutral, neutral_tokens = count_routing(model, tokenizer, texts[neutral_path], routers)
    ranking = rank_experts(behaviour, behaviour_tokens, neutral, neutral_tokens)
    selected = select(ranking, k, mode, routers)
    if not selected:
        raise ValueError("no expert is routed more often for the behaviour set than for the neutral set")
    description = (f"{mode} the {sum(map(len, selected.values()))} expert(s) of {Path(model_dir).name} routed more often "
                   f"for {behaviour_path.name} (sha256 {file_sha256(behaviour_path)[:12]}) than for "
                   f"{neutral_path.name} (sha256 {file_sha256(neutral_path)[:12]})")
    preset = build_preset(name, selected, mode, description)
    return Discovery(ranking, selected, preset, behaviour_tokens, neutral_tokens)


def write_discovery(discovery: Discovery, out: Path) -> Path:
    """Write the preset JSON and, next to it, the ranking as markdown (`<stem>.ranking.md`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(discovery.preset, indent=2) + "\n")
    table = out.with_name(f"{out.stem}.ranking.md")
    table.write_text(ranking_markdown(discovery))
    return table
