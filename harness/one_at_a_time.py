"""Reuse one expensive resource (a server) while consecutive tests ask for the same key.

pytest tears a module-scoped fixture down between indirectly parametrized tests whose
parameters come from different entries of a parametrize list, even when the values are equal,
so a fixture per (architecture, mode) restarted the server for every test case. This keeps the
last one alive and replaces it only when a test asks for another key; tests are listed grouped by
key, so each key starts once and at most one server is alive.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class OneAtATime(Generic[Key, Value]):
    def __init__(self, start: Callable[[Key], Value], stop: Callable[[Value], None]) -> None:
        self._start, self._stop = start, stop
        self._key: Key | None = None
        self._value: Value | None = None
        self.starts = 0

    def get(self, key: Key) -> Value:
        if self._value is None or key != self._key:
            self.close()
            self._value, self._key = self._start(key), key
            self.starts += 1
        return self._value

    def close(self) -> None:
        if self._value is not None:
            self._stop(self._value)
        self._value = self._key = None
