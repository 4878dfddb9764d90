"""The store and its two background threads, as one API-server process runs them.

Opening never fails because of the database: a replica that starts while the database is down
serves with the last-known (default) kill switches and spools its records, and catches up when
it returns. `health()` is what `/v1/steering/experiments` shows (and /metrics, via the gauges).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from steer_serve.experiments.control_state import ControlFollower
from steer_serve.experiments.db_migrations import SCHEMA_VERSION
from steer_serve.experiments.outbox import Outbox
from steer_serve.experiments.store import ExperimentStore, StoreUnavailable
from steer_serve.experiments.store_writer import StoreWriter
from steer_serve.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class StoreServices:
    store: ExperimentStore
    control: ControlFollower
    writer: StoreWriter

    @classmethod
    def open(cls, settings: Settings) -> "StoreServices":
        assert settings.experiments_db_url is not None and settings.outbox_path is not None
        store = ExperimentStore(settings.experiments_db_url)
        control = ControlFollower(store, settings.control_poll_s)
        try:
            store.migrate()
            control.refresh()
        except StoreUnavailable as exc:
            logger.error("experiment store unreachable at start; serving, spooling locally: %s", exc)
        writer = StoreWriter(store, Outbox(settings.outbox_path, settings.outbox_max_bytes))
        return cls(store, control.start(), writer.start())

    def health(self) -> dict[str, Any]:
        healthy = self.writer.healthy and self.control.healthy
        return {
            "backend": self.store.backend, "url": self.store.display_url, "healthy": healthy,
            "schema_version": SCHEMA_VERSION, "last_error": self.writer.last_error or self.control.last_error,
            "outbox_pending_bytes": self.writer.outbox.pending_bytes(), "control_read_at": self.control.last_success,
        }

    def close(self) -> None:
        self.control.stop()
        self.writer.stop()
        self.writer.outbox.close()
        self.store.dispose()
