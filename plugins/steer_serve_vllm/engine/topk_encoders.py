"""The full encoders of the TopK SAEs whose features the engine clamps (`--topk-clamp-saes`).

A TopK SAE's feature i is relu(pre_i) when pre_i is among the k largest of all d_sae
pre-activations of the token and 0 otherwise (SAELens's `TopK`: top-k, then ReLU), so clamping
it needs every pre-activation, i.e. the whole encoder W_enc [D, F] at that layer. The projection
edit (layer_hooks._project) already reads pre_i through the feature's encoder row; for a TopK
feature this module replaces the fixed threshold by a per-token one: halfway between the k-th and
the (k+1)-th largest pre-activation, floored at 0. Then `read > threshold` holds exactly when
pre_i is among the top k and positive, and the decision does not hinge on the rounding difference
between one row's dot product and the full matmul (exact ties between the k-th and (k+1)-th aside,
where SAELens's own choice is arbitrary too).

Memory: D x F x dtype bytes per SAE and worker (the shipped SmolLM2 SAE: 576 x 2304 x 4 B = 5.3 MB
in float32), an explicit operator choice outside --steering-memory. Compute: under torch.compile
the matmul [T, D] x [D, F] and a top-(k+1) run at the SAE's layer once per projection slot (K =
--steering-projections) on every step, steered or not; eager runs them only in steps that carry
projection edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steer_serve.library.sae_formats import SAEFormatError, read_saelens


@dataclass(frozen=True)
class TopKEncoder:
    name: str
    sha256: str  # SparseAutoencoder.content_sha256: the API checks requests against this version
    weight: torch.Tensor  # [D, F] W_enc
    offset: torch.Tensor  # [F] b_enc - b_dec @ W_enc (when b_dec is applied to the input)
    k: int
    rescale: bool  # constant_norm_rescale: pre = sqrt(D) / |h| * (h @ W_enc) + offset

    def threshold(self, stream: torch.Tensor) -> torch.Tensor:
        """stream [T, D] -> [T, 1]: the read above which a feature is selected and positive."""
        dot = stream @ self.weight  # [T, F]
        if self.rescale:
            dot = dot * (stream.shape[-1] ** 0.5 / stream.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        top = torch.topk(dot + self.offset, self.k + 1, dim=-1).values  # [T, k + 1], largest first
        return ((top[:, -2:-1] + top[:, -1:]) / 2).clamp_min(0.0)  # [T, 1]


class TopKEncoders:
    """At most one TopK encoder per layer (a request names the SAE; the layer finds its encoder)."""

    def __init__(self, by_layer: dict[int, TopKEncoder] | None = None) -> None:
        self.by_layer = by_layer or {}

    @classmethod
    def load(cls, names: list[str], sae_dir: Path, hidden_size: int, num_layers: int, device: torch.device,
             dtype: torch.dtype) -> "TopKEncoders":
        """Raises RuntimeError naming the SAE and why: a server asked to clamp an SAE it cannot
        hold must not start (a silent refusal would only show as 400s later)."""
        by_layer: dict[int, TopKEncoder] = {}
        for name in names:
            encoder, layer = _read(name, sae_dir, hidden_size, num_layers, device, dtype)
            if layer in by_layer:
                raise RuntimeError(f"steer-serve: --topk-clamp-saes: {name!r} and {by_layer[layer].name!r} are both "
                                   f"at layer {layer}; the engine holds one TopK encoder per layer")
            by_layer[layer] = encoder
        return cls(by_layer)

    def get(self, layer: int) -> TopKEncoder | None:
        return self.by_layer.get(layer)

    def report(self) -> dict[str, str]:
        """name -> content sha256, for the capability handshake."""
        return {encoder.name: encoder.sha256 for encoder in self.by_layer.values()}

    @property
    def nbytes(self) -> int:
        return sum(e.weight.numel() * e.weight.element_size() + e.offset.numel() * e.offset.element_size()
                   for e in self.by_layer.values())


def _read(name: str, sae_dir: Path, hidden_size: int, num_layers: int, device: torch.device,
          dtype: torch.dtype) -> tuple[TopKEncoder, int]:
    base = sae_dir / name
    try:
        sae = read_saelens(base.with_suffix(".json").read_bytes(), base.with_suffix(".safetensors").read_bytes())
    except (OSError, SAEFormatError) as exc:
        raise RuntimeError(f"steer-serve: --topk-clamp-saes: cannot read SAE {name!r} from {sae_dir} ({exc})") from None
    problem = None
    if sae.architecture != "topk":
        problem = f"it is {sae.architecture}, not topk (its clamps need no full encoder)"
    elif sae.d_in != hidden_size or not 0 <= sae.layer < num_layers:
        problem = f"d_in {sae.d_in} / layer {sae.layer} do not fit the model (hidden {hidden_size}, {num_layers} layers)"
    elif not 0 < sae.k < sae.d_sae:
        problem = f"k {sae.k} must lie in 1..{sae.d_sae - 1}"
    if problem:
        raise RuntimeError(f"steer-serve: --topk-clamp-saes: SAE {name!r}: {problem}")
    offset = sae.b_enc.astype(np.float64) - float(sae.apply_b_dec_to_input) * (sae.b_dec.astype(np.float64) @ sae.W_enc)
    encoder = TopKEncoder(name, sae.content_sha256(), torch.from_numpy(np.ascontiguousarray(sae.W_enc)).to(device, dtype),
                          torch.from_numpy(offset.astype(np.float32)).to(device, dtype), int(sae.k),
                          sae.normalize_activations == "constant_norm_rescale")
    return encoder, sae.layer
