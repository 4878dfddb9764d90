"""Old JSONL logs are read whole, skipping a torn last line and non-object lines."""

from __future__ import annotations

from steer_serve.experiments.jsonl_log import read_records


def test_torn_last_line_and_non_objects_are_skipped(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n[1, 2]\n{"a": 2')
    assert list(read_records(path)) == [{"a": 1}] and list(read_records(tmp_path / "missing.jsonl")) == []
