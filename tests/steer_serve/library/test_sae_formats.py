"""Reading SAELens and Gemma Scope files: round trips, and every malformed file refused by name."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from steer_serve.library.sae_formats import (
    SAEFormatError, layer_of_hook, read_gemma_scope, read_saelens, write_saelens,
)
from steer_serve.library.sparse_autoencoder import SparseAutoencoder

D, F = 8, 20


def sae(architecture: str = "jumprelu", **overrides) -> SparseAutoencoder:
    rng = np.random.default_rng(0)
    fields = dict(layer=2, architecture=architecture, W_enc=rng.normal(size=(D, F)).astype(np.float32),
                  W_dec=rng.normal(size=(F, D)).astype(np.float32), b_enc=np.zeros(F, np.float32),
                  b_dec=rng.normal(size=D).astype(np.float32))
    if architecture == "jumprelu":
        fields["threshold"] = np.full(F, 0.1, np.float32)
    if architecture == "topk":
        fields["k"] = 4
    return SparseAutoencoder(**(fields | overrides))


def weights_of(original: SparseAutoencoder, **changes) -> bytes:
    tensors = {name: torch.from_numpy(getattr(original, name)) for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if original.threshold is not None:
        tensors["threshold"] = torch.from_numpy(original.threshold)
    tensors.update(changes)
    return save_safetensors({k: v for k, v in tensors.items() if v is not None})


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
def test_saelens_round_trip(architecture: str) -> None:
    original = sae(architecture)
    loaded = read_saelens(*write_saelens(original))
    assert (loaded.layer, loaded.architecture, loaded.k) == (2, architecture, original.k)
    np.testing.assert_array_equal(loaded.W_dec, original.W_dec)
    assert loaded.content_sha256() == original.content_sha256()


def test_gemma_scope_npz_is_jumprelu_without_b_dec_on_input() -> None:
    original = sae()
    buffer = io.BytesIO()
    np.savez(buffer, **{n: getattr(original, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    loaded = read_gemma_scope(buffer.getvalue(), layer=5)
    assert (loaded.layer, loaded.architecture, loaded.apply_b_dec_to_input) == (5, "jumprelu", False)
    np.testing.assert_array_equal(loaded.threshold, original.threshold)


@pytest.mark.parametrize("hook, layer", [("blocks.7.hook_resid_post", 7), ("blocks.7.hook_resid_pre", 6),
                                         ("model.layers.12", 12), ("layers.3", 3)])
def test_hook_names_map_to_the_output_of_a_decoder_layer(hook: str, layer: int) -> None:
    assert layer_of_hook(hook) == layer


@pytest.mark.parametrize("hook", ["blocks.7.hook_mlp_out", "blocks.0.hook_resid_pre", "blocks.7.attn.hook_z",
                                  "blocks.7.hook_resid_mid", "embed"])
def test_other_hook_points_are_refused(hook: str) -> None:
    with pytest.raises(SAEFormatError, match="not the residual stream after a decoder layer"):
        layer_of_hook(hook)


def _cfg(**fields) -> bytes:
    return json.dumps({"architecture": "jumprelu", "d_in": D, "d_sae": F,
                       "metadata": {"hook_name": "blocks.2.hook_resid_post"}} | fields).encode()


BAD = {
    "lying d_sae": (_cfg(d_sae=F + 1), lambda s: weights_of(s), "d_sae"),
    "W_dec transposed": (_cfg(), lambda s: weights_of(s, W_dec=torch.from_numpy(s.W_dec.T.copy())), "W_dec must have shape"),
    "NaN in W_enc": (_cfg(), lambda s: weights_of(s, W_enc=torch.full((D, F), float("nan"))), "W_enc contains NaN"),
    "integer weights": (_cfg(), lambda s: weights_of(s, b_dec=torch.zeros(D, dtype=torch.int32)), "b_dec has dtype"),
    "no threshold for jumprelu": (_cfg(), lambda s: weights_of(s, threshold=None), "threshold must have shape"),
    "unknown architecture": (_cfg(architecture="gated"), lambda s: weights_of(s), "architecture 'gated'"),
    "layer-norm inputs": (_cfg(normalize_activations="layer_norm"), lambda s: weights_of(s), "normalize_activations"),
    "topk without k": (_cfg(architecture="topk"), lambda s: weights_of(s, threshold=None), "k must be an integer"),
    "attention hook": (_cfg(metadata={"hook_name": "blocks.2.attn.hook_z"}), lambda s: weights_of(s), "hook_name"),
    "not JSON": (b"{cfg", lambda s: weights_of(s), "cfg.json is not valid JSON"),
    "truncated weights": (_cfg(), lambda s: weights_of(s)[:100], "not a valid safetensors file"),
    "a pickle": (_cfg(), lambda s: pickle.dumps({"W_enc": s.W_enc}), "not a valid safetensors file"),
    "missing b_enc": (_cfg(), lambda s: weights_of(s, b_enc=None), "weights lack b_enc"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_saelens_files_are_refused_naming_the_field(case: str) -> None:
    cfg, weights, fragment = BAD[case]
    with pytest.raises(SAEFormatError, match=fragment):
        read_saelens(cfg, weights(sae()))


def test_malformed_npz_is_refused() -> None:
    with pytest.raises(SAEFormatError, match="not a valid .npz"):
        read_gemma_scope(b"PK\x03\x04 not really a zip", layer=1)
    buffer = io.BytesIO()
    np.savez(buffer, W_enc=np.array([object()], dtype=object))
    with pytest.raises(SAEFormatError):
        read_gemma_scope(buffer.getvalue(), layer=1)


def test_bfloat16_weights_are_refused_with_the_fix() -> None:
    with pytest.raises(SAEFormatError, match="save the SAE in float32"):
        read_saelens(_cfg(), weights_of(sae(), b_dec=torch.zeros(D, dtype=torch.bfloat16)))


def test_layer_given_must_agree_with_hook_name() -> None:
    with pytest.raises(SAEFormatError, match="layer 4 was given"):
        read_saelens(*write_saelens(sae()), layer=4)
