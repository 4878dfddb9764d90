"""The library loads what fits the model and says precisely why anything else was left out."""

from __future__ import annotations

from steer_serve.vector_library import VectorLibrary
from support.libraries import SHAPE, library, vector


def test_fitting_vectors_load_and_describe_themselves(tmp_path) -> None:
    lib = library(tmp_path, good=vector(layers=(1, 5)))
    (entry,) = lib.describe()
    assert entry["name"] == "good" and entry["layers"] == [1, 5] and entry["dim"] == 8
    assert len(entry["sha256"]) == 64


def test_misfits_are_kept_out_with_reasons(tmp_path) -> None:
    lib = library(tmp_path, wide=vector(dim=16), deep=vector(layers=(9,)))
    assert lib.describe() == []
    for name, reason in (("wide", "hidden size 16"), ("deep", "layers [9] are outside")):
        try:
            lib.get(name)
        except KeyError as exc:
            assert reason in exc.args[0]
        else:
            raise AssertionError(f"{name} should be unusable")


def test_duplicate_names_are_refused(tmp_path) -> None:
    from steer_serve.vector_formats import write_vector

    write_vector(vector(), tmp_path / "twin.safetensors")
    write_vector(vector(), tmp_path / "twin.gguf")
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    assert lib.describe() == [] and "same name" in lib.rejected["twin"]
