"""Our SAE maths equals SAELens's own `encode`/`decode`, loaded from the files we write.

SAELens is the independent reference: it reads the SAELens layout (`cfg.json` +
`sae_weights.safetensors`) that `write_saelens` produces, and its encode/decode must give our
numbers for every architecture and normalisation we accept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steer_serve.library.sae_formats import write_saelens
from steer_serve.library.sparse_autoencoder import SparseAutoencoder

import sae_lens  # noqa: E402  (a test dependency: its absence must fail, not skip)

D, F = 16, 40


def random_sae(architecture: str, seed: int = 0, **overrides) -> SparseAutoencoder:
    rng = np.random.default_rng(seed)
    arrays = dict(W_enc=rng.normal(size=(D, F)), W_dec=rng.normal(size=(F, D)) / 4, b_enc=rng.normal(size=F) * 0.3,
                  b_dec=rng.normal(size=D) * 0.5)
    arrays = {name: value.astype(np.float32) for name, value in arrays.items()}
    extra = {"threshold": np.abs(rng.normal(size=F)).astype(np.float32)} if architecture == "jumprelu" else {}
    extra |= {"k": 7} if architecture == "topk" else {}
    return SparseAutoencoder(layer=3, architecture=architecture, **arrays, **extra, **overrides)


def load_with_saelens(sae: SparseAutoencoder, directory: Path):
    cfg, weights = write_saelens(sae)
    (directory / "cfg.json").write_bytes(cfg)
    (directory / "sae_weights.safetensors").write_bytes(weights)
    return sae_lens.SAE.load_from_disk(str(directory), device="cpu")


CASES = [("standard", {}), ("jumprelu", {}), ("topk", {}), ("standard", {"apply_b_dec_to_input": False}),
         ("jumprelu", {"normalize_activations": "constant_norm_rescale"}),
         ("topk", {"normalize_activations": "constant_norm_rescale", "apply_b_dec_to_input": False})]


@pytest.mark.parametrize("architecture, overrides", CASES, ids=lambda v: str(v))
def test_encode_and_decode_equal_saelens(tmp_path: Path, architecture: str, overrides: dict) -> None:
    ours = random_sae(architecture, **overrides)
    reference = load_with_saelens(ours, tmp_path)
    x = np.random.default_rng(1).normal(size=(12, D)).astype(np.float32) * 3
    with torch.no_grad():
        ref_features = reference.encode(torch.from_numpy(x))
        ref_out = reference.decode(ref_features)
    features = ours.encode(x)
    assert (features != 0).any() and (features == 0).any()  # a real sparsity pattern, not a degenerate one
    np.testing.assert_allclose(features, ref_features.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.decode(features, x), ref_out.numpy(), atol=1e-5)


def test_normalised_decoder_row_has_unit_norm() -> None:
    sae = random_sae("standard")
    assert np.linalg.norm(sae.decoder_row(5, normalize=True)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(sae.decoder_row(5), sae.W_dec[5])
