"""safetensors and llama.cpp GGUF control vectors round-trip; bad files are refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from steer_serve.library.vector_formats import VectorFormatError, read_vector, write_vector
from harness.libraries import vector


@pytest.mark.parametrize("suffix", [".safetensors", ".gguf"])
def test_round_trip_keeps_every_number(tmp_path, suffix) -> None:
    original = vector(layers=(0, 3, 17))
    path = tmp_path / f"v{suffix}"
    write_vector(original, path)
    loaded = read_vector(path)
    assert loaded.layers == [0, 3, 17]
    assert loaded.content_sha256() == original.content_sha256()


def test_gguf_written_with_gguf_library_rules_is_read(tmp_path) -> None:
    """A control vector built directly with gguf-py, as llama.cpp's tooling and repeng do."""
    from gguf import GGUFWriter

    directions = {5: np.arange(8, dtype=np.float32), 6: -np.ones(8, dtype=np.float32)}
    writer = GGUFWriter(str(tmp_path / "cv.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for layer, value in directions.items():
        writer.add_tensor(f"direction.{layer}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    loaded = read_vector(tmp_path / "cv.gguf")
    np.testing.assert_array_equal(loaded.directions[5], directions[5])
    assert loaded.metadata["model_hint"] == "llama"


def test_truncated_and_foreign_files_are_refused(tmp_path) -> None:
    path = tmp_path / "v.safetensors"
    write_vector(vector(), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(VectorFormatError, match="not a valid safetensors"):
        read_vector(path)
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(VectorFormatError, match="not a valid GGUF"):
        read_vector(tmp_path / "x.gguf")
    with pytest.raises(VectorFormatError, match="unsupported suffix"):
        read_vector(tmp_path / "v.pt")


def test_nan_directions_are_refused(tmp_path) -> None:
    bad = vector()
    bad.directions[1][0] = np.nan
    write_vector(bad, tmp_path / "nan.safetensors")
    with pytest.raises(VectorFormatError, match="NaN or Inf"):
        read_vector(tmp_path / "nan.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".gguf"])
def test_writing_is_byte_for_byte_reproducible(tmp_path, suffix) -> None:
    original = vector(layers=(1, 2, 3))
    original.metadata.update({"method": "difference_of_means", "dataset": "d.jsonl", "layers": "1,2,3"})
    paths = [tmp_path / f"{i}{suffix}" for i in range(4)]
    for path in paths:
        write_vector(original, path)
    assert len({path.read_bytes() for path in paths}) == 1
    assert read_vector(paths[0]).metadata["method"] == "difference_of_means"
