"""`steer-serve ab import` / `ab export`: JSONL logs into the store, and the tables out as JSONL or CSV.

Import reads the exposure and feedback JSONL files earlier versions wrote. It is idempotent:
exposures keep their response id as key, and a feedback line, which had no id of its own, gets
one derived from its content, so importing the same files twice adds nothing. Lines that do not
validate are counted and skipped. Export streams each table ordered by key, in chunks.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import Table, select

from steer_serve.experiments.db_schema import exposures, feedback
from steer_serve.experiments.jsonl_log import read_records
from steer_serve.experiments.records import Exposure, Feedback
from steer_serve.experiments.store import ExperimentStore

CHUNK = 5000


@dataclass(frozen=True)
class ImportCounts:
    exposures_read: int
    exposures_new: int
    feedback_read: int
    feedback_new: int
    skipped: int


def import_logs(store: ExperimentStore, exposure_log: Path, feedback_log: Path) -> ImportCounts:
    store.migrate()
    skipped = [0]
    exposure_rows = _valid(read_records(exposure_log), _exposure_row, skipped)
    feedback_rows = _valid(read_records(feedback_log), _feedback_row, skipped)
    read_e, new_e = _insert_chunks(store.insert_exposures, exposure_rows)
    read_f, new_f = _insert_chunks(store.insert_feedback, feedback_rows)
    return ImportCounts(read_e, new_e, read_f, new_f, skipped[0])


def export_tables(store: ExperimentStore, out: Path, fmt: Literal["jsonl", "csv"]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [_export(store, table, out / f"{table.name}.{fmt}", fmt) for table in (exposures, feedback)]


def _exposure_row(record: dict[str, Any]) -> dict[str, Any]:
    if not record.get("request_id"):  # early logs kept errors answered before vLLM made an id
        record = {**record, "request_id": f"noid-{_content_hash(record)}"}
    return Exposure.model_validate(record).model_dump(mode="json")


def _feedback_row(record: dict[str, Any]) -> dict[str, Any]:
    if "binary" in record:  # a row exported from the store: the value back to its type
        value = bool(record["value"]) if record["binary"] else record["value"]
        record = {**{k: v for k, v in record.items() if k != "binary"}, "value": value}
    return Feedback.model_validate({"id": f"import-{_content_hash(record)}", **record}).row()


def _content_hash(record: dict[str, Any]) -> str:
    """A key derived from the line itself, so that importing the same file again adds nothing."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:40]


def _valid(records: Iterable[dict[str, Any]], convert: Any, skipped: list[int]) -> Iterator[dict[str, Any]]:
    for record in records:
        try:
            yield convert(record)
        except (ValidationError, ValueError, TypeError):
            skipped[0] += 1


def _insert_chunks(insert: Any, rows: Iterator[dict[str, Any]]) -> tuple[int, int]:
    read = new = 0
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            read, new = read + len(chunk), new + insert(chunk)
            chunk = []
    if chunk:
        read, new = read + len(chunk), new + insert(chunk)
    return read, new


def _export(store: ExperimentStore, table: Table, path: Path, fmt: str) -> Path:
    key = list(table.primary_key.columns)[0]
    names = [column.name for column in table.columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        last: str | None = None
        while True:
            query = select(table).order_by(key).limit(CHUNK)
            rows = store.read(query if last is None else query.where(key > last))
            for row in rows:
                record = dict(row._mapping)
                if writer is not None:
                    writer.writerow(record)
                else:
                    handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            if len(rows) < CHUNK:
                return path
            last = rows[-1]._mapping[key.name]
