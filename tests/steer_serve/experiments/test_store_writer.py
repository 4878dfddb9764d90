"""The outbox and its writer: records reach the database, an outage spools them on disk (bounded,
counted), and after it every record is in the database exactly once, also when a batch is
resent or a dead process's outbox is adopted."""

from __future__ import annotations

import json
import time

from prometheus_client import REGISTRY
from sqlalchemy import func, select

from steer_serve.experiments.db_schema import exposures, feedback
from steer_serve.experiments.outbox import Outbox
from steer_serve.experiments.store import ExperimentStore, database_url
from steer_serve.experiments.store_writer import StoreWriter
from harness.experiments import exposure_row, feedback_row
from harness.servers import free_port


def _count(store: ExperimentStore, table) -> int:
    return store.read(select(func.count()).select_from(table))[0][0]


def _metric(name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(f"steer_serve:{name}_total", {"kind": kind}) or 0.0


def test_records_reach_the_database_and_the_outbox_empties(store_url, tmp_path) -> None:
    store = ExperimentStore(store_url)
    writer = StoreWriter(store, Outbox(tmp_path / "outbox", 1 << 20))
    for i in range(50):
        assert writer.record("exposure", exposure_row(i, "control"))
        assert writer.record("feedback", feedback_row(f"chatcmpl-{i}", "liked", i % 2 == 0))
    assert writer.outbox.pending_bytes() > 0
    assert writer.flush() == 100
    assert (_count(store, exposures), _count(store, feedback), writer.outbox.pending_bytes()) == (50, 50, 0)
    assert writer.outbox.own.path.stat().st_size == 0  # space reclaimed


def test_a_resent_batch_lands_once(store_url, tmp_path) -> None:
    """A crash after the insert committed but before the offset moved: the batch is sent again."""
    store = ExperimentStore(store_url)
    writer = StoreWriter(store, Outbox(tmp_path / "outbox", 1 << 20))
    for i in range(20):
        writer.record("exposure", exposure_row(i, "treatment"))
    records, end = writer.outbox.read_pending(writer.outbox.own, 1000)
    store.migrate()
    store.insert_exposures([r["row"] for r in records])  # committed, offset not advanced
    assert writer.flush() == 0 and _count(store, exposures) == 20


def test_unreachable_database_spools_then_everything_lands_once(postgres, tmp_path) -> None:
    """A real outage: the session PostgreSQL is killed, records keep coming, it restarts."""
    store = ExperimentStore(database_url(postgres.new_database(), None))
    store.migrate()
    writer = StoreWriter(store, Outbox(tmp_path / "outbox", 1 << 20), interval_s=0.05, retry_s=0.2).start()
    spooled_before = _metric("experiment_records_spooled", "exposure")
    try:
        for i in range(30):
            writer.record("exposure", exposure_row(i, "control"))
        _wait(lambda: _count(store, exposures) == 30)
        postgres.kill()
        try:
            for i in range(30, 130):
                writer.record("exposure", exposure_row(i, "control"))
                writer.record("feedback", feedback_row(f"chatcmpl-{i}", "rating", float(i)))
                if i == 30:
                    _wait(lambda: not writer.healthy)  # the next flush fails: later records count as spooled
            time.sleep(1.0)
            assert writer.outbox.pending_bytes() > 0 and writer.last_error
        finally:
            postgres.start()
        _wait(lambda: writer.healthy and writer.outbox.pending_bytes() == 0, timeout=30)
    finally:
        writer.stop()
    assert (_count(store, exposures), _count(store, feedback)) == (130, 100)
    assert _metric("experiment_records_spooled", "exposure") - spooled_before == 99  # all after the first failure


def test_a_full_outbox_drops_and_counts(tmp_path) -> None:
    store = ExperimentStore(database_url(f"postgresql://nobody@127.0.0.1:{free_port()}/none", None))
    writer = StoreWriter(store, Outbox(tmp_path / "outbox", 4096))
    dropped_before = _metric("experiment_records_dropped", "exposure")
    accepted = sum(writer.record("exposure", exposure_row(i, "control")) for i in range(40))
    assert 0 < accepted < 40 and writer.outbox.pending_bytes() <= 4096
    assert _metric("experiment_records_dropped", "exposure") - dropped_before == 40 - accepted


def test_a_dead_process_outbox_is_adopted_flushed_and_removed(store_url, tmp_path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    orphan = directory / "otherhost-999999.jsonl"  # nobody holds its lock: its process is gone
    lines = [json.dumps({"kind": "exposure", "row": exposure_row(i, "control")}) for i in range(7)]
    orphan.write_text("\n".join(lines) + "\n" + '{"kind": "exposure", "row": {"torn')  # crashed mid-write
    store = ExperimentStore(store_url)
    writer = StoreWriter(store, Outbox(directory, 1 << 20))
    writer.flush()
    assert _count(store, exposures) == 7 and not orphan.exists()


def _wait(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
