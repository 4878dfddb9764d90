"""The HF-hooks baseline: how repeng / steering-vectors can serve steered requests.

Those libraries add one vector to a whole forward batch, so requests with distinct vectors
run one batch per vector; requests sharing a vector can share a batch. Greedy, no stopping.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def hf_throughput(model_dir: Path, groups: list[tuple[list[list[int]], torch.Tensor]], layers: list[int],
                  output_len: int) -> dict[str, float]:
    """groups: (prompts of equal length, vector) run as one batch each. Returns tokens/s."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = 0
    start = time.perf_counter()
    for prompts, vector in groups:
        handles = [model.model.layers[layer].register_forward_hook(_adder(vector)) for layer in layers]
        try:
            with torch.no_grad():
                out = model.generate(torch.tensor(prompts), attention_mask=torch.ones(len(prompts), len(prompts[0]),
                                     dtype=torch.long), max_new_tokens=output_len, min_new_tokens=output_len,
                                     do_sample=False, pad_token_id=0)
        finally:
            for handle in handles:
                handle.remove()
        tokens += (out.shape[1] - len(prompts[0])) * len(prompts)
    elapsed = time.perf_counter() - start
    return {"output_tokens": tokens, "seconds": elapsed, "output_throughput": tokens / elapsed}


def _adder(vector: torch.Tensor):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    return hook
