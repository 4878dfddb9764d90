"""Kill switches and the reload generation, shared by every API-server process via one file.

An admin call reaches one process; the others must follow. Each process re-reads the file when
its mtime changes, looking at most every `poll_s` seconds (one `stat` per request otherwise
skipped), so a kill switch reaches all processes within about a second. Writers take an
`fcntl` lock and replace the file atomically, so concurrent admin calls never lose an update.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from steer_serve.files import ChangePoller, atomic_write


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
        self._state = ControlState()
        self._poller = ChangePoller(self._mtime_ns, poll_s)  # unmarked: the first call reads the file

    def current(self) -> ControlState:
        if self._poller.changed():
            mtime = self._mtime_ns()  # before reading: a write during the read is seen next time
            self._state = self._read()
            self._poller.mark(mtime)
        return self._state

    def update(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        """Read-modify-write under an exclusive lock; returns the state written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = change(self._read())
            atomic_write(self.path, state.model_dump_json().encode())
            self._state = state
            self._poller.mark(self._mtime_ns())
        return state

    def _mtime_ns(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _read(self) -> ControlState:
        try:
            return ControlState.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return ControlState()
