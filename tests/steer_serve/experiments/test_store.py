"""The experiment store on both backends (SQLite file, real PostgreSQL): versioned schema applied
once even by concurrent starters, idempotent inserts, shared kill switches and reload generation."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from steer_serve.experiments.db_migrations import SCHEMA_VERSION, current_version, schema_migrations
from steer_serve.experiments.db_schema import exposures, feedback
from steer_serve.experiments.store import ExperimentStore, StoreUnavailable, database_url
from harness.experiments import exposure_row, feedback_row


def test_migrations_run_once_even_when_replicas_start_together(store_url) -> None:
    stores = [ExperimentStore(store_url) for _ in range(4)]
    applied: list[list[int]] = []
    threads = [threading.Thread(target=lambda s=s: applied.append(s.migrate())) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(tuple, applied)) == [(), (), (), tuple(range(1, SCHEMA_VERSION + 1))]
    assert current_version(stores[0].engine) == SCHEMA_VERSION
    assert stores[0].read(select(func.count()).select_from(schema_migrations))[0][0] == SCHEMA_VERSION


def test_inserts_are_idempotent_by_key(store_url) -> None:
    store = ExperimentStore(store_url)
    store.migrate()
    rows = [exposure_row(i, "control") for i in range(10)]
    assert store.insert_exposures(rows) == 10
    assert store.insert_exposures(rows + [exposure_row(10, "treatment")]) == 1  # a resent batch lands once
    notes = [feedback_row(f"chatcmpl-{i}", "liked", True) for i in range(3)]
    assert store.insert_feedback(notes) == 3 and store.insert_feedback(notes) == 0
    assert store.read(select(func.count()).select_from(exposures))[0][0] == 11
    assert store.read(select(func.count()).select_from(feedback))[0][0] == 3


def test_kill_switches_and_generation_are_shared(store_url) -> None:
    one, two = ExperimentStore(store_url), ExperimentStore(store_url)
    one.migrate()
    assert two.read_control().model_dump() == {"kill_all": False, "killed": [], "generation": 0}
    one.set_kill_switch("tone", True)
    one.set_kill_switch("other", True)
    two.set_kill_switch("other", False)
    two.set_kill_switch(None, True)
    assert one.bump_generation().generation == 1 and two.bump_generation().generation == 2
    assert one.read_control().model_dump() == {"kill_all": True, "killed": ["tone"], "generation": 2}


def test_unreachable_database_raises_store_unavailable_quickly() -> None:
    from harness.servers import free_port

    store = ExperimentStore(database_url(f"postgresql://nobody@127.0.0.1:{free_port()}/none", None))
    with pytest.raises(StoreUnavailable, match="127.0.0.1"):
        store.read_control()


def test_database_urls() -> None:
    from pathlib import Path

    assert database_url(None, Path("/x/experiments.db")) == "sqlite:////x/experiments.db"
    assert database_url("postgresql://u:p@h:5/d", None) == "postgresql+psycopg://u:p@h:5/d"
    assert database_url("postgres://h/d", None) == "postgresql+psycopg://h/d"
    with pytest.raises(ValueError, match="mysql"):
        database_url("mysql://h/d", None)
