"""The engine's projection edit, fed an SAE feature clamp, against SAELens's own encoder.

No server: the hook's maths (`_project`) on random residual streams, with the table row the
resolver builds (`feature_clamp`), must equal h + (c - f(h)) * W_dec[i] / s, where f is
SAELens's `encode` of feature i. And the clamp property: when the feature's decoder row reads
back through its encoder with gain 1 (W_dec[i] . W_enc[:, i] = 1), re-encoding the edited stream
gives exactly c.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steer_serve.library.sae_formats import read_saelens
from steer_serve.request.steering_resolver import feature_clamp
from steer_serve_vllm.engine.layer_hooks import _project
from harness.saes import random_sae, saelens_model

import sae_lens  # noqa: E402,F401  (a test dependency: its absence must fail, not skip)
D = 32


def _edit(sae, feature: int, value: float, stream: torch.Tensor) -> torch.Tensor:
    proj = feature_clamp(sae, feature, value, "all")
    column = lambda x: torch.full((stream.shape[0], 1), float(x))  # noqa: E731
    rows = lambda v: torch.from_numpy(v).expand(stream.shape[0], -1)  # noqa: E731
    return stream + _project(stream, torch.zeros_like(stream), rows(proj.direction), rows(proj.reads), column(value),
                             column(proj.offset), column(proj.threshold), column(float(proj.rescale)))


@pytest.mark.parametrize("kind, extra", [("standard", {}), ("jumprelu", {}),
                                         ("jumprelu", {"normalize": "constant_norm_rescale"})])
def test_clamp_equals_saelens_formula(tmp_path: Path, kind: str, extra: dict) -> None:
    tiny = random_sae("s", 0, kind, D, seed=3, **extra)
    ours = read_saelens(*(_files(tiny)))
    reference = saelens_model(tiny, tmp_path)
    stream = torch.from_numpy(np.random.default_rng(0).normal(size=(64, D)).astype(np.float32)) * 2
    with torch.no_grad():
        f = reference.encode(stream)[:, 4]
    assert (f > 0).any() and (f == 0).any()
    scale = (D ** 0.5 / stream.norm(dim=-1, keepdim=True)) if extra else 1.0
    expected = stream + (2.5 - f)[:, None] * torch.from_numpy(tiny.weights["W_dec"][4]) / scale
    torch.testing.assert_close(_edit(ours, 4, 2.5, stream), expected, atol=1e-5, rtol=1e-5)


def test_clamped_feature_reads_back_as_its_value(tmp_path: Path) -> None:
    tiny = random_sae("s", 0, "jumprelu", D, seed=5)
    w_dec = tiny.weights["W_dec"]
    tiny.weights["W_enc"][:, 6] = w_dec[6] / float(w_dec[6] @ w_dec[6])  # gain 1: W_dec[6] . W_enc[:, 6] = 1
    ours = read_saelens(*(_files(tiny)))
    reference = saelens_model(tiny, tmp_path)
    stream = torch.from_numpy(np.random.default_rng(1).normal(size=(64, D)).astype(np.float32))
    with torch.no_grad():
        before = reference.encode(stream)[:, 6]
        after = reference.encode(_edit(ours, 6, 3.0, stream))[:, 6]
    active = before > 0  # clamping reads f through the gate: where f = 0 the edit adds c on top of pre <= t
    assert active.any()
    torch.testing.assert_close(after[active], torch.full_like(after[active], 3.0), atol=1e-4, rtol=0)


def _files(tiny) -> tuple[bytes, bytes]:
    import json

    from safetensors.numpy import save

    return json.dumps(tiny.cfg()).encode(), save(tiny.weights)
