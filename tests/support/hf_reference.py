"""The independent reference: HF transformers in float32, steered by plain forward hooks.

Deliberately simple and separate from the product: each addition is a forward hook on
`model.model.layers[L]` that adds `vector` to the layer's output at prompt tokens (prefill
forward), generated tokens (decode forwards) or both. Greedy decoding, no stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


@dataclass(frozen=True)
class Addition:
    layer: int
    vector: torch.Tensor  # [D] float32, already scaled
    positions: str = "all"


@dataclass(frozen=True)
class Generation:
    tokens: list[int]
    logprobs: list[float]


class HFReference:
    def __init__(self, model_dir: Path) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def greedy(self, prompt: list[int], max_tokens: int, additions: list[Addition] = ()) -> Generation:
        phase = {"now": "prompt"}
        handles = [self._hook(add, phase) for add in additions]
        try:
            return self._decode(prompt, max_tokens, phase)
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, add: Addition, phase: dict[str, str]):
        def add_vector(module, args, output):
            if add.positions not in ("all", phase["now"]):
                return output
            if isinstance(output, tuple):
                return (output[0] + add.vector, *output[1:])
            return output + add.vector

        return self.model.model.layers[add.layer].register_forward_hook(add_vector)

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
