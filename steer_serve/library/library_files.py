"""What the vector library and the presets share about their files: safe names, and the
directory signature ((mtime, size) per file) that tells another process's change.

Writes go through `steer_serve.files.atomic_write`, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Library names (vectors and presets): ASCII letters, digits, '.', '_', '-'; no leading dot, no '/'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str = "name") -> str:
    """Return `name`, or raise ValueError saying what is allowed (path traversal, unicode, ...)."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise ValueError(
            f"{what} {name!r} is not allowed: 1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


Signature = dict[str, tuple[int, int]]


def scan(directory: Path, suffixes: tuple[str, ...]) -> Signature:
    """name -> (mtime_ns, size) of the regular files in `directory` with one of `suffixes`."""
    found: Signature = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(suffixes):
            continue
        try:
            stat = entry.stat()
        except OSError:
            continue
        if entry.is_file():
            found[entry.name] = (stat.st_mtime_ns, stat.st_size)
    return found
