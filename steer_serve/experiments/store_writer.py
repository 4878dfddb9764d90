"""Moves outbox records into the store from a background thread, and says how healthy that is.

`record()` is what the request path calls: an append to the local outbox, never a database
round trip. The flusher thread inserts batches every `interval_s`; when the database fails it
backs off (`retry_s`), leaves the records on disk and tries again, so that after an outage
everything spooled lands exactly once (keys + `ON CONFLICT DO NOTHING`). Metrics: records
spooled while the store was down, dropped because the outbox was full, waiting, flushed, and
whether the store is up.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from steer_serve import metrics
from steer_serve.experiments.outbox import KINDS, Kind, Outbox, OutboxFile
from steer_serve.experiments.store import ExperimentStore, StoreUnavailable

logger = logging.getLogger(__name__)
BATCH_RECORDS = 5000


class StoreWriter:
    def __init__(self, store: ExperimentStore, outbox: Outbox, interval_s: float = 0.1, retry_s: float = 1.0) -> None:
        self.store = store
        self.outbox = outbox
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.healthy = True
        self.last_error: str | None = None
        self._migrated = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, kind: Kind, row: dict[str, Any]) -> bool:
        """Queue one row for the database; False if it had to be dropped (outbox full)."""
        if not self.outbox.put(kind, row):
            metrics.STORE_DROPPED.labels(kind).inc()
            logger.error("experiment outbox full (%d bytes): dropped a %s record", self.outbox.max_bytes, kind)
            return False
        if not self.healthy:
            metrics.STORE_SPOOLED.labels(kind).inc()
        return True

    def flush(self) -> int:
        """Insert everything waiting now; returns rows new to the database. Raises StoreUnavailable."""
        if not self._migrated:  # the database may have been unreachable when the server started
            self.store.migrate()
            self._migrated = True
        inserted = 0
        for outbox_file in self.outbox.files():
            inserted += self._flush_file(outbox_file)
        metrics.STORE_PENDING_BYTES.set(self.outbox.pending_bytes())
        return inserted

    def start(self) -> "StoreWriter":
        self._thread = threading.Thread(target=self._run, name="steer-serve-outbox", daemon=True)
        self._thread.start()
        return self

    def stop(self, final_flush_s: float = 5.0) -> None:
        """Stop the thread, then try once more to flush (what fails stays on disk for the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=final_flush_s)
        try:
            self.flush()
        except StoreUnavailable as exc:
            logger.warning("experiment records stay in the outbox %s: %s", self.outbox.directory, exc)

    def _flush_file(self, outbox_file: OutboxFile) -> int:
        inserted = 0
        while True:
            records, end = self.outbox.read_pending(outbox_file, BATCH_RECORDS)
            rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
            for record in records:
                rows[record["kind"]].append(record["row"])
            inserted += self.store.insert_exposures(rows["exposure"]) + self.store.insert_feedback(rows["feedback"])
            for kind in KINDS:
                metrics.STORE_FLUSHED.labels(kind).inc(len(rows[kind]))
            if self.outbox.mark_flushed(outbox_file, end) or not records:
                return inserted

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.flush()
                self._set_health(True, None)
                self._stop.wait(self.interval_s)
            except StoreUnavailable as exc:
                self._set_health(False, str(exc))
                self._stop.wait(self.retry_s)
            except Exception:  # noqa: BLE001 - the thread must survive anything; the records stay on disk
                logger.exception("experiment outbox flush failed")
                self._stop.wait(self.retry_s)

    def _set_health(self, healthy: bool, error: str | None) -> None:
        if healthy != self.healthy:
            (logger.info if healthy else logger.error)(
                "experiment store %s %s", self.store.display_url, "reachable again" if healthy else f"unreachable: {error}")
        self.healthy, self.last_error = healthy, error
        metrics.STORE_UP.set(1 if healthy else 0)
        if healthy:
            metrics.STORE_PENDING_BYTES.set(self.outbox.pending_bytes())
