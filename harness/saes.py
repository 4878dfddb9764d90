"""Tiny random SAEs for the tiny test models, written by hand in SAELens's layout, and SAELens's
own model of each (the independent reference for a feature's activation).

Library files are `NAME.json` (cfg.json) + `NAME.safetensors` (sae_weights.safetensors).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

D_SAE = 256


@dataclass(frozen=True)
class TinySAE:
    name: str
    layer: int
    architecture: str
    weights: dict[str, np.ndarray]
    k: int | None = None
    normalize: str = "none"

    def cfg(self) -> dict:
        cfg = {"architecture": self.architecture, "d_in": self.weights["W_enc"].shape[0], "d_sae": D_SAE,
               "dtype": "float32", "apply_b_dec_to_input": True, "normalize_activations": self.normalize,
               "metadata": {"hook_name": f"blocks.{self.layer}.hook_resid_post"}}
        return cfg | ({"k": self.k} if self.k else {})


def random_sae(name: str, layer: int, architecture: str, hidden: int, seed: int, **extra) -> TinySAE:
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(D_SAE, hidden)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    weights = {"W_enc": np.ascontiguousarray(w_dec.T * 2.0, dtype=np.float32), "W_dec": w_dec,
               "b_enc": rng.normal(scale=0.05, size=D_SAE).astype(np.float32),
               "b_dec": rng.normal(scale=0.05, size=hidden).astype(np.float32)}
    if architecture == "jumprelu":
        weights["threshold"] = np.full(D_SAE, 0.05, np.float32)
    return TinySAE(name, layer, architecture, weights, **extra)


def write_library(directory: Path, saes: list[TinySAE]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for sae in saes:
        (directory / f"{sae.name}.json").write_text(json.dumps(sae.cfg()))
        save_file(sae.weights, str(directory / f"{sae.name}.safetensors"))
    return directory


def saelens_model(sae: TinySAE, scratch: Path):
    """SAELens's own SAE object for `sae` (loaded from a SAELens-layout directory)."""
    import sae_lens

    directory = scratch / sae.name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(sae.cfg()))
    save_file(sae.weights, str(directory / "sae_weights.safetensors"))
    model = sae_lens.SAE.load_from_disk(str(directory), device="cpu")
    shutil.rmtree(directory)
    return model
