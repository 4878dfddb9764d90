"""Plant an expert that a tiny random MoE routes to exactly when it reads a marker token.

The router of layer `layer` gets row `expert` = alpha * w, where w is the least-squares
solution of `x . w = +1` for the router inputs x at marker tokens and `-1` at all other tokens
of the given texts: after planting, that expert's logit is about +alpha at the marker and
-alpha elsewhere, so it is (all but) always in the top-k at the marker and never otherwise.
Planting in the last layer keeps every earlier layer's routing as it was.

With `quiet_other_layers`, every other layer's router is zeroed first, so there every token
ties and goes to the same experts. Without it, a random MoE routes mostly by token identity,
so a frequent marker also shifts routing in the other layers (towards the experts the marker
token happens to prefer) by about as much as the planted expert: a real signal, but one that
would leave the planted expert's rank to chance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.tiny_models import TOKENIZER_FILES


def plant_marker_expert(model_dir: Path, target: Path, texts: list[str], marker_id: int, layer: int, expert: int,
                        alpha: float = 30.0, quiet_other_layers: bool = True) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if quiet_other_layers:
        with torch.no_grad():
            for index, decoder_layer in enumerate(model.model.layers):
                if index != layer:
                    decoder_layer.mlp.gate.weight.zero_()
    router = model.model.layers[layer].mlp.gate
    inputs: list[torch.Tensor] = []
    handle = router.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].reshape(-1, args[0].shape[-1])))
    labels = []
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            labels += [1.0 if t == marker_id else -1.0 for t in ids[0].tolist()]
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    x = torch.cat(inputs).double().numpy()
    w, *_ = np.linalg.lstsq(x, np.array(labels), rcond=None)
    with torch.no_grad():
        router.weight[expert] = torch.from_numpy(alpha * w).float()
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, target / name)
    return target
