"""Reads the JSON-lines exposure and feedback logs that earlier versions wrote (`ab import`).

Readers skip a torn last line left by a crash, and any line that is not a JSON object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of `path` (none if it does not exist)."""
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
