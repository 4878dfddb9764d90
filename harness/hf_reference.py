"""The independent reference: HF transformers in float32, edited by plain PyTorch hooks.

Deliberately simple and separate from the product: where each family keeps its decoder layers,
attention output projection and router is written out below (SITES, HF module paths, found
independently of the engine's adapters). Each edit is applied at prompt tokens (the prefill
forward), generated tokens (decode forwards) or both:
- Addition: forward hook on decoder layer L adding a vector to the layer output;
- Projection: forward hook setting the output's component along a unit direction to a value;
- HeadScale: forward pre-hook on the attention output projection scaling each head's input slice;
- RouterEdit: HF's own router, with its `F.linear` logits edited (-inf disabled, +100 forced)
  before HF's own softmax / top-k / renormalisation; for DeepSeek-V3 (selection on
  sigmoid(logit) + e_score_correction_bias) the correction bias itself is edited instead
  (-inf: never selectable, +100: always selected), so HF's own grouped top-k and weights run.
Layer-output hooks run in registration order: all additions first, then projections in order.
Greedy decoding, no stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

FORCED_LOGIT = 100.0  # documented meaning of "force" (README)

# model_type -> (decoder layers, attention output projection in a layer, router in a layer)
SITES = {
    "gpt2": ("transformer.h", "attn.c_proj", None),
    "gpt_neox": ("gpt_neox.layers", "attention.dense", None),
    "gpt_oss": ("model.layers", "self_attn.o_proj", "mlp.router"),
}
DEFAULT_SITES = ("model.layers", "self_attn.o_proj", "mlp.gate")
SELECTION_EDITED = ("deepseek_v3",)  # routers edited through their correction bias


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


@dataclass(frozen=True)
class Addition:
    layer: int
    vector: torch.Tensor  # [D] float32, already scaled
    positions: str = "all"
    max_dose: float | None = None  # clip |vector| to max_dose * |layer output| per token


def _dosed(h: torch.Tensor, add: Addition) -> torch.Tensor:
    if add.max_dose is None:
        return h + add.vector
    factor = torch.clamp(add.max_dose * h.norm(dim=-1, keepdim=True) / add.vector.norm(), max=1.0)
    return h + factor * add.vector


@dataclass(frozen=True)
class Projection:
    layer: int
    direction: torch.Tensor  # [D], unit norm
    value: float = 0.0
    positions: str = "all"


@dataclass(frozen=True)
class HeadScale:
    layer: int
    scales: torch.Tensor  # [H]
    positions: str = "all"


@dataclass(frozen=True)
class RouterEdit:
    layer: int
    disabled: tuple[int, ...] = ()
    forced: tuple[int, ...] = ()
    positions: str = "all"


@dataclass(frozen=True)
class FeatureClamp:
    """Set an SAE feature to `value`: h + (value - f(h)) * decoder / s (s = sqrt(D)/|h| when `rescale`),
    f being the SAE's own activation of the feature (SAELens's `encode`, passed in)."""

    layer: int
    feature: Callable[[torch.Tensor], torch.Tensor]  # [..., D] -> [...]
    decoder: torch.Tensor  # [D]
    value: float
    rescale: bool = False
    positions: str = "all"

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        s = h.shape[-1] ** 0.5 / h.norm(dim=-1, keepdim=True) if self.rescale else 1.0
        return h + (self.value - self.feature(h))[..., None] * self.decoder / s


Edit = Union[Addition, Projection, HeadScale, RouterEdit, FeatureClamp]


@dataclass(frozen=True)
class Condition:
    """CAST's condition as IBM's LeashLayer computes it, on the output of decoder `layer` (before
    that layer's edits): on the prompt forward, h = mean (or last) of the prompt's hidden states,
    P = v v^T / v.v, sim = cos(h, tanh(P h)), met = sim > threshold (above) or < threshold;
    decided once and held. Gated edits apply only once it is met (so, on the prompt forward, only
    at layers from the condition layer on, as in IBM's first call). compare "token" (ours): every
    token of every forward by its own hidden state, gating that token's edits only."""

    layer: int
    vector: torch.Tensor  # [D]
    threshold: float
    above: bool = True
    compare: str = "mean"

    def similarity(self, hidden: torch.Tensor) -> float:
        h = hidden.mean(dim=0) if self.compare == "mean" else hidden[-1]  # hidden [S, D]
        return float(self.token_similarities(h[None])[0])

    def token_similarities(self, hidden: torch.Tensor) -> torch.Tensor:
        """cos(h, tanh(P h)) for each row of hidden [S, D] -> [S] float64, IBM's formula with P = v v^T / v.v."""
        v, h = self.vector.double(), hidden.double()
        projected = torch.tanh(h @ (torch.outer(v, v) / torch.dot(v, v)))  # P symmetric: (P h_s) per row
        return (h * projected).sum(-1) / (h.norm(dim=-1) * projected.norm(dim=-1))

    def met(self, similarity: torch.Tensor | float) -> torch.Tensor | bool:
        return similarity > self.threshold if self.above else similarity < self.threshold


@dataclass(frozen=True)
class Generation:
    tokens: list[int]
    logprobs: list[float]


class HFReference:
    def __init__(self, model_dir: Path) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.kind = self.model.config.model_type
        self.layers_path, self.attention_out, self.router = SITES.get(self.kind, DEFAULT_SITES)

    @torch.no_grad()
    def greedy(self, prompt: list[int], max_tokens: int, edits: list[Edit] = (), condition: Condition | None = None,
               gated: list[Edit] = ()) -> Generation:
        """Greedy generation with `edits`, and `gated` edits that apply only when `condition` is met
        (`self.condition_met` tells the decision afterwards)."""
        phase = {"now": "prompt"}
        self.condition_met: bool | None = None
        self.token_verdicts: list[bool] = []  # compare "token": every token's own verdict, in order
        handles = [] if condition is None else [self._install_condition(condition, phase)]
        per_token = condition is not None and condition.compare == "token"
        gate = (lambda: self.token_gate) if per_token else (lambda: self.condition_met is True)  # noqa: E731
        last = (Projection, FeatureClamp)  # projections act on the stream after every addition
        tagged = [(e, None) for e in edits] + [(e, gate) for e in gated]
        ordered = [t for t in tagged if not isinstance(t[0], last)] + [t for t in tagged if isinstance(t[0], last)]
        handles += [handle for edit, when in ordered for handle in self._install(edit, phase, when)]
        try:
            return self._decode(prompt, max_tokens, phase)
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def hidden_states(self, tokens: list[int], edits: list[Edit] = ()) -> torch.Tensor:
        """The residual stream of one forward over `tokens`: [L+1, n, D], entry L+1 = after decoder layer L.

        Unedited: HF's own `output_hidden_states` (the last entry normed). With `edits` (positions "all"):
        HF records a layer's output before forward hooks run, so the edited stream (what the next layer
        reads) is recorded by a hook registered after the edits."""
        phase = {"now": "prompt"}
        handles = [handle for edit in edits for handle in self._install(edit, phase)]
        recorded: dict[int, torch.Tensor] = {}
        if edits:
            for index, layer in enumerate(_get(self.model, self.layers_path)):
                handles.append(layer.register_forward_hook(
                    lambda module, args, output, index=index: recorded.__setitem__(
                        index, output[0] if isinstance(output, tuple) else output)))
        try:
            out = self.model(torch.tensor([tokens]), output_hidden_states=True)
        finally:
            for handle in handles:
                handle.remove()
        states = list(out.hidden_states)
        for index, stream in recorded.items():
            states[index + 1] = stream
        return torch.stack(states)[:, 0]

    def _install_condition(self, condition: Condition, phase: dict[str, str]) -> Any:
        def decide(module, args, output):
            stream = output[0] if isinstance(output, tuple) else output  # [1, S, D]
            if condition.compare == "token":
                self.token_gate = condition.met(condition.token_similarities(stream[0]))[None]  # [1, S]
                self.token_verdicts += self.token_gate[0].tolist()
            elif phase["now"] == "prompt":
                sim = self.condition_similarity = condition.similarity(stream[0])
                self.condition_met = condition.met(sim)
            return output

        return _get(self.model, self.layers_path)[condition.layer].register_forward_hook(decide)

    def _install(self, edit: Edit, phase: dict[str, str], gate: Callable[[], bool] | None = None) -> list[Any]:
        active = lambda: edit.positions in ("all", phase["now"]) and (gate is None or gate())  # noqa: E731
        layer = _get(self.model, self.layers_path)[edit.layer]
        if isinstance(edit, Addition):
            return [layer.register_forward_hook(_on_output(active, lambda h: _dosed(h, edit)))]
        if isinstance(edit, Projection):
            d = edit.direction
            return [layer.register_forward_hook(_on_output(active, lambda h: h + (edit.value - h @ d)[..., None] * d))]
        if isinstance(edit, FeatureClamp):
            return [layer.register_forward_hook(_on_output(active, edit.apply))]
        if isinstance(edit, HeadScale):
            return [_get(layer, self.attention_out).register_forward_pre_hook(_scale_heads(active, edit.scales))]
        if self.kind in SELECTION_EDITED:
            return _edit_selection(_get(layer, self.router), active, edit)
        return _edit_router(_get(layer, self.router), active, edit)

    def _decode(self, prompt: list[int], max_tokens: int, phase: dict[str, str]) -> Generation:
        out = self.model(torch.tensor([prompt]), use_cache=True)
        phase["now"] = "generated"
        tokens, logprobs = [], []
        for _ in range(max_tokens):
            log_probs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            token = int(torch.argmax(log_probs))
            tokens.append(token)
            logprobs.append(float(log_probs[token]))
            out = self.model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        return Generation(tokens, logprobs)


def _on_output(active, change):
    """`active()` is a bool, or a [B, S] bool mask (a per-token gate): then only those tokens change."""
    def masked(h: torch.Tensor, verdict: bool | torch.Tensor) -> torch.Tensor:
        return torch.where(verdict[..., None], change(h), h) if isinstance(verdict, torch.Tensor) else change(h)

    def hook(module, args, output):
        verdict = active()
        if verdict is False:
            return output
        if isinstance(output, tuple):
            return (masked(output[0], verdict), *output[1:])
        return masked(output, verdict)

    return hook


def _scale_heads(active, scales: torch.Tensor):
    def hook(module, args):
        if not active():
            return args
        x = args[0]  # [B, S, H*hd]
        heads = x.view(*x.shape[:-1], scales.shape[0], -1) * scales[:, None]
        return (heads.view(x.shape), *args[1:])

    return hook


def _edit_router(router, active, edit: RouterEdit) -> list[Any]:
    """Swap F.linear while HF's router runs, so its logits come out edited."""
    original = F.linear

    def edited_linear(x, weight, bias=None):
        logits = original(x, weight, bias)
        offset = torch.zeros(logits.shape[-1])
        offset[list(edit.forced)] = FORCED_LOGIT
        offset[list(edit.disabled)] = float("-inf")
        return logits + offset

    def before(module, args):
        if active():
            F.linear = edited_linear

    def after(module, args, output):
        F.linear = original

    return [router.register_forward_pre_hook(before), router.register_forward_hook(after)]


def _edit_selection(router, active, edit: RouterEdit) -> list[Any]:
    """Add -inf (disabled) / +100 (forced) to the correction bias while the router runs."""
    original = router.e_score_correction_bias.clone()
    offset = torch.zeros_like(original)
    offset[list(edit.forced)] = FORCED_LOGIT
    offset[list(edit.disabled)] = float("-inf")

    def before(module, args):
        if active():
            router.e_score_correction_bias.copy_(original + offset)

    def after(module, args, output):
        router.e_score_correction_bias.copy_(original)

    return [router.register_forward_pre_hook(before), router.register_forward_hook(after)]
