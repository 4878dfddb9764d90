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
from steer_serve_vllm.engine.layer_hooks import _project, _project_all
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


@pytest.mark.parametrize("rescaled", [False, True])
def test_all_slots_at_once_equal_the_slots_one_by_one(rescaled: bool) -> None:
    """_project_all (one pass over a layer's slots) against _project called per slot on the stream
    the slots before left: correlated slot vectors, so each slot's move changes what later slots
    read; thresholds active, absent (-inf) and unused zero slots mixed; float64 so only algebra
    could differ."""
    gen = torch.Generator().manual_seed(11)
    tokens, slots = 40, 6
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    shared = draw(tokens, 1, D)
    directions, encoders = shared + draw(tokens, slots, D), shared + draw(tokens, slots, D)  # correlated
    directions[:, -1] = 0.0  # an unused slot: zero direction, no edit
    values, offsets = draw(tokens, slots), draw(tokens, slots)
    thresholds = torch.where(draw(tokens, slots) > 0, torch.full((tokens, slots), float("-inf"), dtype=torch.float64),
                             draw(tokens, slots).abs())
    rescales = (draw(tokens, slots) > 0).to(torch.float64) if rescaled else torch.zeros(tokens, slots, dtype=torch.float64)
    stream = 3 * draw(tokens, D)
    expected = torch.zeros_like(stream)
    for k in range(slots):
        expected = _project(stream + expected, expected, directions[:, k], encoders[:, k], values[:, k : k + 1],
                            offsets[:, k : k + 1], thresholds[:, k : k + 1], rescales[:, k : k + 1])
    fused = _project_all(stream, torch.zeros_like(stream), directions, encoders, values, offsets, thresholds,
                         rescales if rescaled else None)
    torch.testing.assert_close(fused, expected, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(expected, torch.zeros_like(expected))


def _files(tiny) -> tuple[bytes, bytes]:
    import json

    from safetensors.numpy import save

    return json.dumps(tiny.cfg()).encode(), save(tiny.weights)


def _topk_encoder(tiny, tmp_path: Path):
    from harness.saes import write_library
    from steer_serve_vllm.engine.topk_encoders import TopKEncoders

    write_library(tmp_path / "lib", [tiny])
    encoders = TopKEncoders.load([tiny.name], tmp_path / "lib", D, 4, torch.device("cpu"), torch.float32)
    return encoders.get(tiny.layer)


@pytest.mark.parametrize("extra", [{"k": 6}, {"k": 6, "normalize": "constant_norm_rescale"}])
def test_topk_clamp_with_the_engines_encoder_equals_saelens(tmp_path: Path, extra: dict) -> None:
    """A TopK feature's activation: the hook's threshold from the full encoder (TopKEncoder) makes
    the projection read exactly SAELens's `encode` of that feature, selected or not, so the edit is
    h + (c - f(h)) W_dec[i] / s on every token."""
    tiny = random_sae("tk", 1, "topk", D, seed=7, **extra)
    ours = read_saelens(*(_files(tiny)))
    reference = saelens_model(tiny, tmp_path)
    encoder = _topk_encoder(tiny, tmp_path)
    stream = torch.from_numpy(np.random.default_rng(2).normal(size=(256, D)).astype(np.float32)) * 2
    scale = (D ** 0.5 / stream.norm(dim=-1, keepdim=True)) if "normalize" in extra else 1.0
    selected = 0
    for feature in range(0, 64, 3):
        with torch.no_grad():
            f = reference.encode(stream)[:, feature]
        selected += int((f > 0).sum())
        proj = feature_clamp(ours, feature, 2.5, "all")
        assert proj.topk == 6 and proj.threshold == 0.0
        column = lambda x: torch.full((stream.shape[0], 1), float(x))  # noqa: E731
        rows = lambda v: torch.from_numpy(v).expand(stream.shape[0], -1)  # noqa: E731
        edited = stream + _project(stream, torch.zeros_like(stream), rows(proj.direction), rows(proj.reads), column(2.5),
                                   column(proj.offset), encoder.threshold(stream), column(float(proj.rescale)))
        expected = stream + (2.5 - f)[:, None] * torch.from_numpy(tiny.weights["W_dec"][feature]) / scale
        torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-5)
    assert 0 < selected < 256 * 22  # some features selected on some tokens, not all


def test_topk_encoders_refuse_what_they_cannot_hold(tmp_path: Path) -> None:
    from harness.saes import write_library
    from steer_serve_vllm.engine.topk_encoders import TopKEncoders

    write_library(tmp_path, [random_sae("a", 1, "topk", D, seed=1, k=4), random_sae("b", 1, "topk", D, seed=2, k=4),
                             random_sae("jr", 1, "jumprelu", D, seed=3)])
    load = lambda names, hidden=D: TopKEncoders.load(names, tmp_path, hidden, 4, torch.device("cpu"), torch.float32)  # noqa: E731
    held = load(["a"])
    assert held.report() == {"a": read_saelens(*_files(random_sae("a", 1, "topk", D, seed=1, k=4))).content_sha256()}
    assert held.nbytes == D * 256 * 4 + 256 * 4
    for names, hidden, fragment in ((["a", "b"], D, "both at layer 1"), (["jr"], D, "not topk"),
                                    (["nope"], D, "cannot read SAE 'nope'"), (["a"], 16, "do not fit the model")):
        with pytest.raises(RuntimeError, match=fragment):
            load(names, hidden)
