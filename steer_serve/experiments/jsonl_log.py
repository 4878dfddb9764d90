"""Append-only JSON-lines files that several API-server processes write at once.

Each record is one `write()` on a descriptor opened with O_APPEND: POSIX makes the offset update
and the write atomic for regular files, so lines from different processes never interleave
(records are a few hundred bytes). Readers skip a torn last line left by a crash.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def append_record(path: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        written = os.write(descriptor, line)
    finally:
        os.close(descriptor)
    if written != len(line):
        raise OSError(f"short write to {path}: {written} of {len(line)} bytes")


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of `path` (none if it does not exist yet)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
            except ValueError:
                logger.warning("%s:%d: skipping a line that is not JSON (torn write?)", path, number)
                continue
            if isinstance(record, dict):
                yield record
