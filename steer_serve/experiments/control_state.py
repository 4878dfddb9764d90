"""Kill switches and the reload generation, shared by every process and replica through the store.

An admin call reaches one process of one replica; all must follow. Each process keeps a copy of
the state that a background thread refreshes from the database every `poll_s` (0.25 s by
default, so a change reaches every replica well within a second). Requests read only that copy:
a slow or unreachable database never delays a request, it only freezes the copy (the follower
then reports itself unhealthy, and the last known state stays in force).
"""

from __future__ import annotations

import logging
import threading
import time

from steer_serve.experiments.records import ControlState
from steer_serve.experiments.store import ExperimentStore, StoreUnavailable

logger = logging.getLogger(__name__)


class ControlFollower:
    def __init__(self, store: ExperimentStore, poll_s: float = 0.25) -> None:
        self.store = store
        self.poll_s = poll_s
        self.healthy = False
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._state = ControlState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> ControlState:
        return self._state

    def refresh(self) -> ControlState:
        """Read the shared state now (raises StoreUnavailable; the copy is kept)."""
        try:
            self.accept(self.store.read_control())
        except StoreUnavailable as exc:
            self.healthy, self.last_error = False, str(exc)
            raise
        return self._state

    def accept(self, state: ControlState) -> None:
        """Take a state just read or written (an admin route's own change applies here at once)."""
        self._state, self.healthy, self.last_error, self.last_success = state, True, None, time.time()

    def start(self) -> "ControlFollower":
        self._thread = threading.Thread(target=self._run, name="steer-serve-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            was_healthy = self.healthy
            try:
                self.refresh()
            except StoreUnavailable as exc:
                if was_healthy:
                    logger.error("experiment store unreachable, keeping the last kill switches: %s", exc)
