"""The SAE library directory: what fits the served model is usable, the rest is refused with why."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from harness.saes import random_sae, write_library
from steer_serve.library.named_store import NameTaken
from steer_serve.library.sae_formats import read_saelens
from steer_serve.library.sae_library import SAELibrary
from steer_serve.model_shape import ModelShape

SHAPE = ModelShape("tiny", hidden_size=32, num_layers=4)


def test_loads_saelens_and_gemma_scope_entries_and_explains_misfits(tmp_path: Path) -> None:
    good = random_sae("good", 1, "jumprelu", 32, 0)
    write_library(tmp_path, [good, random_sae("wide", 1, "standard", 64, 1), random_sae("deep", 9, "standard", 32, 2)])
    buffer = io.BytesIO()
    np.savez(buffer, **good.weights)
    (tmp_path / "scope.npz").write_bytes(buffer.getvalue())
    (tmp_path / "scope.json").write_text(json.dumps({"layer": 2}))
    (tmp_path / "orphan.safetensors").write_bytes(b"x")
    library = SAELibrary(tmp_path, SHAPE, poll_s=0)
    assert [(e.name, e.sae.layer, e.sae.architecture) for e in library.entries()] == [
        ("good", 1, "jumprelu"), ("scope", 2, "jumprelu")]
    assert library.get("scope").sae.apply_b_dec_to_input is False
    rejected = library.rejected
    assert "d_in 64 does not match the model's hidden size 32" in rejected["wide"]
    assert "layer 9 is out of range" in rejected["deep"]
    assert "orphan.json is missing" in rejected["orphan"]
    with pytest.raises(KeyError, match="SAE 'wide' is unusable"):
        library.get("wide")


def test_register_writes_saelens_files_and_delete_removes_them(tmp_path: Path) -> None:
    library = SAELibrary(tmp_path / "saes", SHAPE, poll_s=0)
    sae = read_saelens(json.dumps(random_sae("x", 3, "topk", 32, 4, k=5).cfg()).encode(),
                       _weights(random_sae("x", 3, "topk", 32, 4, k=5)))
    entry = library.register("mine", sae)
    assert entry.describe()["architecture"] == "topk" and (tmp_path / "saes" / "mine.json").exists()
    with pytest.raises(NameTaken):
        library.register("mine", sae)
    assert SAELibrary(tmp_path / "saes", SHAPE, poll_s=0).get("mine").sae.content_sha256() == sae.content_sha256()
    assert sorted(library.delete("mine")) == ["mine.json", "mine.safetensors"]
    with pytest.raises(KeyError, match="unknown SAE"):
        library.get("mine")


def _weights(tiny) -> bytes:
    from safetensors.numpy import save

    return save(tiny.weights)
