"""Several processes appending at once never tear or interleave lines."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from steer_serve.experiments.jsonl_log import append_record, read_records


def _writer(path: str, worker: int) -> None:
    for index in range(300):
        append_record(Path(path), {"worker": worker, "index": index, "pad": "x" * (50 + index)})


def test_concurrent_appends_from_processes_stay_whole(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    processes = [multiprocessing.get_context("fork").Process(target=_writer, args=(str(path), w)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        assert process.exitcode == 0
    records = list(read_records(path))
    assert len(records) == 1200 == len(path.read_bytes().splitlines())
    assert {(r["worker"], r["index"]) for r in records} == {(w, i) for w in range(4) for i in range(300)}


def test_torn_last_line_is_skipped(tmp_path) -> None:
    path = tmp_path / "log.jsonl"
    append_record(path, {"a": 1})
    with open(path, "ab") as handle:
        handle.write(b'{"a": 2')
    assert list(read_records(path)) == [{"a": 1}] and list(read_records(tmp_path / "missing.jsonl")) == []
