"""Kill switches and the reload generation, shared by every API-server process via one file.

An admin call reaches one process; the others must follow. Each process re-reads the file when
its mtime changes, looking at most every `poll_s` seconds (one `stat` per request otherwise
skipped), so a kill switch reaches all processes within about a second. Writers take an
`fcntl` lock and replace the file atomically, so concurrent admin calls never lose an update.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class ControlState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kill_all: bool = False
    killed: list[str] = []
    generation: int = 0

    def is_killed(self, key: str) -> bool:
        return self.kill_all or key in self.killed


class ControlFile:
    def __init__(self, path: Path, poll_s: float = 1.0) -> None:
        self.path = path
        self.poll_s = poll_s
        self._state = ControlState()
        self._mtime_ns: int | None = None
        self._checked_at = float("-inf")

    def current(self) -> ControlState:
        now = time.monotonic()
        if now - self._checked_at >= self.poll_s:
            self._checked_at = now
            self._refresh()
        return self._state

    def update(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        """Read-modify-write under an exclusive lock; returns the state written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = change(self._read())
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(state.model_dump_json())
            os.replace(temporary, self.path)
        self._checked_at = float("-inf")
        return self.current()

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._state, self._mtime_ns = ControlState(), None
            return
        if mtime != self._mtime_ns:
            self._state, self._mtime_ns = self._read(), mtime

    def _read(self) -> ControlState:
        try:
            return ControlState.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return ControlState()
