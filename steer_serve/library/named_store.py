"""What the vector library and the presets share: a directory of named files, read into an
immutable snapshot of usable items plus the reasons the others are unusable.

Readers never take the lock: they read the current snapshot, which writers (under the lock)
replace whole after every change (copy-on-write). `refresh()` re-reads the directory when
another process changed it, checked at most once per `poll_s`. Parsed files are cached by
(file, mtime, size) so that a reload only parses what changed.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from steer_serve.files import ChangePoller
from steer_serve.library.library_files import Signature, scan

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class NameTaken(Exception):
    """Registration under a name that is already in use (pass replace=True to swap it)."""


@dataclass(frozen=True)
class Snapshot(Generic[Item]):
    items: dict[str, Item]
    rejected: dict[str, str]  # name -> why it is unusable


class NamedFileStore(ABC, Generic[Item]):
    """Subclasses set `kind` and `suffixes` and implement `_load`."""

    kind: ClassVar[str]  # "vector", "preset": used in messages
    suffixes: ClassVar[tuple[str, ...]]  # the files that define an item (one per name)
    watched_suffixes: ClassVar[tuple[str, ...]] = ()  # extra files whose changes trigger a reload

    def __init__(self, directory: Path, poll_s: float) -> None:
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._watch = ChangePoller(lambda: scan(self.directory, self._all_suffixes()), poll_s)
        self._cache: dict[tuple[Any, ...], Item | str] = {}
        self._snapshot: Snapshot[Item] = Snapshot({}, {})
        with self._lock:
            self._reload()

    @classmethod
    def _all_suffixes(cls) -> tuple[str, ...]:
        return cls.suffixes + cls.watched_suffixes

    # ---- reading (any thread; never blocks on a writer) -----------------------------------
    def get(self, name: str) -> Item:
        """The item; KeyError whose message says why the name is unusable, or what exists."""
        self.refresh()
        snapshot = self._snapshot
        if name in snapshot.items:
            return snapshot.items[name]
        if name in snapshot.rejected:
            raise KeyError(f"{self.kind} {name!r} is unusable: {snapshot.rejected[name]}")
        known = ", ".join(sorted(snapshot.items)) or "none"
        raise KeyError(f"unknown {self.kind} {name!r} (available: {known})")

    def items(self) -> dict[str, Item]:
        """Every usable entry by name (a copy of the current snapshot)."""
        self.refresh()
        return dict(self._snapshot.items)

    @property
    def rejected(self) -> dict[str, str]:
        self.refresh()
        return dict(self._snapshot.rejected)

    def __len__(self) -> int:
        self.refresh()
        return len(self._snapshot.items)

    def refresh(self) -> bool:
        """Re-read the directory if its files changed (checked at most once per poll_s). True if reloaded."""
        if not self._lock.acquire(blocking=False):
            return False  # a writer is busy; it reloads when done
        try:
            if not self._watch.changed():
                return False
            self._reload()
            return True
        finally:
            self._lock.release()

    def _exists(self, name: str) -> bool:
        return name in self._snapshot.items or name in self._snapshot.rejected

    # ---- loading (under the lock) ---------------------------------------------------------
    def _reload(self) -> None:
        signature = scan(self.directory, self._all_suffixes())
        self._watch.mark(signature)  # scanned before reading: a change during the read is seen next time
        by_name: dict[str, list[str]] = {}
        for file_name in sorted(signature):
            stem, suffix = file_name.rsplit(".", 1)
            if f".{suffix}" in self.suffixes:
                by_name.setdefault(stem, []).append(file_name)
        items: dict[str, Item] = {}
        rejected: dict[str, str] = {}
        cache: dict[tuple[Any, ...], Item | str] = {}
        for name, files in by_name.items():
            if len(files) > 1:
                rejected[name] = f"{', '.join(files)}: another file has the same name (one {self.kind} per name)"
                continue
            key = self._cache_key(name, files[0], signature)
            loaded = self._cache.get(key)
            if loaded is None:
                loaded = self._load(name, self.directory / files[0])
                if isinstance(loaded, str):
                    logger.warning("%s %s not loaded: %s", self.kind, name, loaded)
            cache[key] = loaded
            if isinstance(loaded, str):
                rejected[name] = loaded
            else:
                items[name] = loaded
        self._cache = cache
        previous, self._snapshot = self._snapshot, Snapshot(items, rejected)
        self._reloaded(previous)

    def _cache_key(self, name: str, file_name: str, signature: Signature) -> tuple[Any, ...]:
        return (file_name, signature[file_name])

    @abstractmethod
    def _load(self, name: str, path: Path) -> Item | str:
        """The parsed item, or a message saying why the file is unusable."""

    def _reloaded(self, previous: Snapshot[Item]) -> None:
        """Called after every reload (under the lock)."""
