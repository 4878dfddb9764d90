"""File helpers shared by every store several API-server processes use at once (vector library,
presets, the experiments' control file): atomic writes, and a throttled "did it change?" check.

Writers go through `atomic_write` (temp file in the same directory + `os.replace`), so a reader
never sees half a file. Readers ask a `ChangePoller` at most once per `poll_s` whether the
store's signature (a directory listing, a file's mtime) differs from the one they last loaded.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

FILE_MODE = 0o644
Signature = TypeVar("Signature")


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


class ChangePoller(Generic[Signature]):
    """Tells, at most once per `poll_s`, whether `read_signature()` differs from the last `mark()`."""

    def __init__(self, read_signature: Callable[[], Signature], poll_s: float = 1.0) -> None:
        self.read_signature = read_signature
        self.poll_s = poll_s
        self._signature: Signature | None = None
        self._checked = float("-inf")

    def mark(self, signature: Signature) -> None:
        """Record the state a (re)load was made from (read it *before* loading)."""
        self._signature = signature
        self._checked = time.monotonic()

    def changed(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self.poll_s:
            return False
        self._checked = now
        return self.read_signature() != self._signature

    def expire(self) -> None:
        """Check on the next call, whatever the interval (after this process wrote the store)."""
        self._checked = float("-inf")
