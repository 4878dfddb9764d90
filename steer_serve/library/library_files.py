"""File helpers shared by the vector library and the presets: atomic writes, safe names, and a
cheap "did this directory change?" check so that several API-server processes converge.

Writers go through `atomic_write` (temp file in the same directory + `os.replace`), so a reader
never sees half a file. Readers call `DirectoryWatch.changed()` at most once per `poll_s`: it
lists the directory and compares (name, mtime, size) of the files it cares about.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

# Library names (vectors and presets): ASCII letters, digits, '.', '_', '-'; no leading dot, no '/'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FILE_MODE = 0o644


def check_name(name: str, what: str = "name") -> str:
    """Return `name`, or raise ValueError saying what is allowed (path traversal, unicode, ...)."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise ValueError(
            f"{what} {name!r} is not allowed: 1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; library files are as readable as a plain write makes them
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove(path: Path) -> bool:
    """Delete `path` if it exists; True if something was removed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


class DirectoryWatch:
    """Tells, at most once per `poll_s`, whether the watched files changed since `mark()`."""

    def __init__(self, directory: Path, suffixes: tuple[str, ...], poll_s: float = 1.0) -> None:
        self.directory = directory
        self.suffixes = suffixes
        self.poll_s = poll_s
        self._signature: Signature = {}
        self._checked = 0.0

    def mark(self, signature: Signature) -> None:
        """Record the state a (re)load was made from (scan it *before* reading the files)."""
        self._signature = signature
        self._checked = time.monotonic()

    def changed(self) -> Signature | None:
        """The new signature if the directory changed (and the poll interval has passed), else None."""
        now = time.monotonic()
        if now - self._checked < self.poll_s:
            return None
        self._checked = now
        signature = scan(self.directory, self.suffixes)
        return signature if signature != self._signature else None
