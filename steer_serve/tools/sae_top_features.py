"""Which features of a library SAE fire on a text: what a user looks at before steering by feature.

The text is run through the HF model (float32, CPU is fine) up to the SAE's layer; the layer's
output (the SAE's hook point, the stream steer-serve edits) is encoded with the SAE's own
formulas. Features are ranked by their largest activation over the text's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steer_serve.tools.activations import capture_layers, load_model, token_ids
from steer_serve.library.sae_library import read_sae_files
from steer_serve.library.sparse_autoencoder import SparseAutoencoder


@dataclass(frozen=True)
class FeatureHit:
    feature: int
    max_activation: float
    token: str  # where the maximum occurs
    position: int
    tokens_active: int  # on how many of the text's tokens the feature is active


def sae_from_library(sae_dir: Path, name: str) -> SparseAutoencoder:
    weights = next((sae_dir / f"{name}{suffix}" for suffix in (".safetensors", ".npz")
                    if (sae_dir / f"{name}{suffix}").exists()), None)
    if weights is None:
        raise ValueError(f"no SAE {name!r} in {sae_dir} (NAME.safetensors or NAME.npz with NAME.json)")
    return read_sae_files(weights, sae_dir / f"{name}.json")


def top_features(model_dir: Path, sae: SparseAutoencoder, text: str, top: int = 10) -> list[FeatureHit]:
    import torch

    model, tokenizer = load_model(model_dir)
    ids = token_ids(tokenizer, text)
    with capture_layers(model, [sae.layer]) as captured, torch.no_grad():
        model(input_ids=ids, use_cache=False)
    features = sae.encode(captured[sae.layer][0].numpy())  # [S, F]
    peak = features.max(axis=0)  # [F]
    ranked = [int(f) for f in np.argsort(-peak)[:top] if peak[f] > 0]
    hits = []
    for feature in ranked:
        position = int(features[:, feature].argmax())
        hits.append(FeatureHit(feature, float(peak[feature]), tokenizer.decode(ids[0, position: position + 1]),
                               position, int((features[:, feature] > 0).sum())))
    return hits


def render_table(hits: list[FeatureHit], sae_name: str, layer: int) -> str:
    lines = [f"SAE {sae_name} (layer {layer}): features by their largest activation on the text", "",
             "| feature | max activation | at token | position | tokens active |", "|---:|---:|---|---:|---:|"]
    lines += [f"| {h.feature} | {h.max_activation:.2f} | `{h.token!r}` | {h.position} | {h.tokens_active} |" for h in hits]
    return "\n".join(lines)
