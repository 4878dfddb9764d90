"""The library loads what fits the model and says precisely why anything else was left out."""

from __future__ import annotations

from steer_serve.library.vector_library import VectorLibrary
from harness.libraries import SHAPE, library, vector


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
    from steer_serve.library.vector_formats import write_vector

    write_vector(vector(), tmp_path / "twin.safetensors")
    write_vector(vector(), tmp_path / "twin.gguf")
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    assert lib.describe() == [] and "same name" in lib.rejected["twin"]


# ---- runtime mutations -----------------------------------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from steer_serve.library.library_files import check_name  # noqa: E402
from steer_serve.library.vector_formats import VectorFormatError, vector_bytes  # noqa: E402
from steer_serve.library.named_store import NameTaken  # noqa: E402


def _bytes(value, suffix: str = ".safetensors") -> bytes:
    return vector_bytes(value, suffix)[0]


def test_register_stores_safetensors_and_sidecar_and_survives_reload(tmp_path) -> None:
    counts: list[int] = []
    lib = VectorLibrary.load_dir(tmp_path, SHAPE, on_change=counts.append)
    source = vector(layers=(0, 3), seed=4)
    entry = lib.register("fresh", _bytes(source, ".gguf"), metadata={"method": "pca", "source_data": "pairs.jsonl", "n": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.json", "fresh.safetensors"]
    sidecar = json.loads((tmp_path / "fresh.json").read_text())
    assert sidecar["content_sha256"] == source.content_sha256() and sidecar["layers"] == [0, 3]
    assert sidecar["hidden_size"] == 8 and sidecar["method"] == "pca" and sidecar["source_data"] == "pairs.jsonl"
    assert sidecar["model_id"] == "unit" and sidecar["created"]
    assert entry.describe()["metadata"]["n"] == "3" and counts[-1] == 1
    again = VectorLibrary.load_dir(tmp_path, SHAPE)  # "restart"
    described = again.get("fresh").describe()
    assert described["method"] == "pca" and described["created"] == sidecar["created"]
    np.testing.assert_array_equal(again.get("fresh").vector.directions[3], source.directions[3])


def test_register_refuses_misfits_bad_names_and_bad_files(tmp_path) -> None:
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    with pytest.raises(ValueError, match="hidden size 16 does not match"):
        lib.register("wide", _bytes(vector(dim=16)))
    with pytest.raises(ValueError, match=r"layers \[9\] are outside"):
        lib.register("deep", _bytes(vector(layers=(9,))))
    for bad in ("../x", "a/b", ".hidden", "", "caf\u00e9", "x\n", "a" * 129, "x\x00"):
        with pytest.raises(ValueError, match="not allowed"):
            lib.register(bad, _bytes(vector()))
    good = _bytes(vector())
    for junk, why in ((b"", "neither"), (b"hello world", "neither"), (good[: len(good) // 2], "not a valid safetensors"),
                      (_bytes(vector(), ".gguf")[:100], "not a valid GGUF")):
        with pytest.raises(VectorFormatError, match=why):
            lib.register("junk", junk)
    assert list(tmp_path.iterdir()) == [] and len(lib) == 0


def test_name_taken_unless_replace_and_replace_swaps_gguf(tmp_path) -> None:
    from steer_serve.library.vector_formats import write_vector

    write_vector(vector(seed=1), tmp_path / "old.gguf")
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    with pytest.raises(NameTaken):
        lib.register("old", _bytes(vector(seed=2)))
    entry = lib.register("old", _bytes(vector(seed=2)), replace=True)
    assert entry.record["content_sha256"] == vector(seed=2).content_sha256()
    assert not (tmp_path / "old.gguf").exists() and lib.describe()[0]["format"] == "safetensors"


def test_delete_removes_files_and_unknown_is_keyerror(tmp_path) -> None:
    counts: list[int] = []
    lib = VectorLibrary.load_dir(tmp_path, SHAPE, on_change=counts.append)
    lib.register("gone", _bytes(vector()))
    assert lib.delete("gone") == ["gone.safetensors", "gone.json"]
    assert list(tmp_path.iterdir()) == [] and counts[-1] == 0
    with pytest.raises(KeyError, match="unknown vector 'gone'"):
        lib.get("gone")
    with pytest.raises(KeyError):
        lib.delete("gone")
    with pytest.raises(ValueError):
        lib.delete("../etc")


def test_entries_held_by_a_reader_stay_valid_after_delete(tmp_path) -> None:
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    lib.register("v", _bytes(vector(seed=5)))
    held = lib.get("v")
    lib.delete("v")
    np.testing.assert_array_equal(held.vector.directions[1], vector(seed=5).directions[1])


def test_other_process_changes_are_picked_up_by_polling(tmp_path) -> None:
    reader = VectorLibrary.load_dir(tmp_path, SHAPE, poll_s=0.0)
    writer = VectorLibrary.load_dir(tmp_path, SHAPE, poll_s=3600.0)
    writer.register("shared", _bytes(vector()))
    assert reader.get("shared").name == "shared"
    writer.delete("shared")
    with pytest.raises(KeyError):
        reader.get("shared")
    slow = VectorLibrary.load_dir(tmp_path, SHAPE, poll_s=3600.0)
    writer.register("late", _bytes(vector()))
    with pytest.raises(KeyError):
        slow.get("late")  # within its poll interval a process keeps its snapshot


def test_sidecar_of_other_numbers_is_ignored(tmp_path) -> None:
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    lib.register("v", _bytes(vector(seed=1)), metadata={"method": "mine"})
    sidecar = json.loads((tmp_path / "v.json").read_text())
    from steer_serve.library.vector_formats import write_vector

    write_vector(vector(seed=9), tmp_path / "v.safetensors")  # swapped behind our back
    assert VectorLibrary.load_dir(tmp_path, SHAPE).get("v").record["method"] is None
    assert sidecar["method"] == "mine"


def test_concurrent_registrations_and_reads_are_consistent(tmp_path) -> None:
    lib = VectorLibrary.load_dir(tmp_path, SHAPE, poll_s=0.0)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                lib.register(f"v{i}-{j}", _bytes(vector(seed=i * 10 + j)))
                lib.describe()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(lib) == 20
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_check_name_uses_fullmatch() -> None:
    assert check_name("gloomy.v2_a-b") == "gloomy.v2_a-b"
    with pytest.raises(ValueError):
        check_name("gloomy\n")


def test_written_files_are_world_readable(tmp_path) -> None:
    lib = VectorLibrary.load_dir(tmp_path, SHAPE)
    lib.register("v", _bytes(vector()))
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}
