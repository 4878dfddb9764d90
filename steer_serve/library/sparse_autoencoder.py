"""A sparse autoencoder on the residual stream after one decoder layer, with SAELens's formulas.

Legend: D = d_in (the model's hidden size), F = d_sae (features), N = tokens.

encode (SAELens `process_sae_in` then the architecture's activation):
    x_n   = normalise(x)                       # "none" | "constant_norm_rescale": x * sqrt(D) / |x|
    pre   = (x_n - b_dec * apply_b_dec_to_input) @ W_enc + b_enc          # [N, F]
    f     = relu(pre)                          # standard
          = relu(pre) * (pre > threshold)      # jumprelu
          = relu(top-k values of pre), 0 elsewhere                          # topk
decode: (f @ W_dec + b_dec), then the normalisation undone (times |x| / sqrt(D)).

Only the layer's residual stream ("resid_post" of layer L = the output of decoder layer L, the
point steer-serve edits) is accepted as a hook point; everything else is refused at load.
"""

from __future__ import annotations

import hashlib
import functools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Architecture = Literal["standard", "jumprelu", "topk"]
Normalisation = Literal["none", "constant_norm_rescale"]
ARCHITECTURES: tuple[str, ...] = ("standard", "jumprelu", "topk")
NORMALISATIONS: tuple[str, ...] = ("none", "constant_norm_rescale")


@dataclass(frozen=True, eq=False)
class SparseAutoencoder:
    """Weights are float32 numpy arrays: W_enc [D, F], W_dec [F, D], b_enc [F], b_dec [D]."""

    layer: int
    architecture: Architecture
    W_enc: np.ndarray
    W_dec: np.ndarray
    b_enc: np.ndarray
    b_dec: np.ndarray
    threshold: np.ndarray | None = None  # [F], jumprelu only
    k: int | None = None  # topk only
    apply_b_dec_to_input: bool = True
    normalize_activations: Normalisation = "none"
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    # ---- SAELens's forward ------------------------------------------------------------
    def pre_activations(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N, F]: the encoder's pre-activation (before relu / threshold / top-k)."""
        x = np.asarray(x, dtype=np.float32)
        sae_in = x * self._norm_coefficient(x) - self.b_dec * float(self.apply_b_dec_to_input)  # [N, D]
        return sae_in @ self.W_enc + self.b_enc  # [N, F]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N, F] feature activations."""
        pre = self.pre_activations(x)  # [N, F]
        if self.architecture == "standard":
            return np.maximum(pre, 0.0)
        if self.architecture == "jumprelu":
            return np.maximum(pre, 0.0) * (pre > self.threshold)
        top = np.argpartition(-pre, self.k - 1, axis=-1)[..., : self.k]  # [N, k]
        acts = np.zeros_like(pre)
        np.put_along_axis(acts, top, np.maximum(np.take_along_axis(pre, top, axis=-1), 0.0), axis=-1)
        return acts

    def decode(self, features: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
        """[N, F] -> [N, D]; `x` (the encoded input) is needed to undo a per-token normalisation."""
        out = np.asarray(features, dtype=np.float32) @ self.W_dec + self.b_dec  # [N, D]
        if self.normalize_activations == "constant_norm_rescale":
            if x is None:
                raise ValueError("decode of a constant_norm_rescale SAE needs the input it encoded")
            out = out / self._norm_coefficient(np.asarray(x, dtype=np.float32))
        return out

    def _norm_coefficient(self, x: np.ndarray) -> np.ndarray | float:
        if self.normalize_activations == "constant_norm_rescale":
            return np.sqrt(self.d_in) / np.linalg.norm(x, axis=-1, keepdims=True)  # [N, 1]
        return 1.0

    # ---- what an intervention needs -----------------------------------------------------
    def decoder_row(self, feature: int, normalize: bool = False) -> np.ndarray:
        """W_dec[feature] ([D]); unit-normalised when `normalize` (Neuronpedia's normalize_steering)."""
        row = self.W_dec[feature].astype(np.float32)
        if not normalize:
            return row
        norm = float(np.linalg.norm(row.astype(np.float64)))
        return row if norm == 0.0 else (row / norm).astype(np.float32)

    @functools.cached_property
    def sha256(self) -> str:
        """content_sha256(), computed once (the weights never change after loading)."""
        return self.content_sha256()

    def content_sha256(self) -> str:
        """Hash of the numbers and the settings that change the maths (not of file bytes)."""
        digest = hashlib.sha256(f"sae|{self.layer}|{self.architecture}|{self.k}|{self.apply_b_dec_to_input}|"
                                f"{self.normalize_activations}".encode())
        for array in (self.W_enc, self.W_dec, self.b_enc, self.b_dec, self.threshold):
            if array is not None:
                digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, object]:
        return {"layer": self.layer, "d_in": self.d_in, "d_sae": self.d_sae, "architecture": self.architecture,
                "k": self.k, "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "normalize_activations": self.normalize_activations, "content_sha256": self.content_sha256()}


def check_sae(sae: SparseAutoencoder) -> None:
    """Raise ValueError naming the field when the weights do not form a usable SAE."""
    if sae.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {sae.architecture!r} is not supported (use one of {', '.join(ARCHITECTURES)})")
    if sae.normalize_activations not in NORMALISATIONS:
        raise ValueError(f"normalize_activations {sae.normalize_activations!r} is not supported "
                         f"(use one of {', '.join(NORMALISATIONS)})")
    if sae.W_enc.ndim != 2 or min(sae.W_enc.shape) < 1:
        raise ValueError(f"W_enc must be a [d_in, d_sae] matrix, got shape {list(sae.W_enc.shape)}")
    d_in, d_sae = sae.W_enc.shape
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if sae.architecture == "jumprelu":
        expected["threshold"] = (d_sae,)
    for name, shape in expected.items():
        array = getattr(sae, name)
        if array is None or tuple(array.shape) != shape:
            got = "missing" if array is None else list(array.shape)
            raise ValueError(f"{name} must have shape {list(shape)} for W_enc {[d_in, d_sae]}, got {got}")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        array = getattr(sae, name)
        if array is not None and not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if sae.architecture == "topk" and not (isinstance(sae.k, int) and 1 <= sae.k <= d_sae):
        raise ValueError(f"k must be an integer in 1..{d_sae} for a topk SAE, got {sae.k!r}")
    if sae.layer < 0:
        raise ValueError(f"layer must be >= 0, got {sae.layer}")
