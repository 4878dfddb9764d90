"""Versioned schema: an ordered list of migrations and a `schema_migrations` table that records them.

Why not Alembic: the schema is a handful of tables, and what matters here is that several replicas
starting at once apply each step exactly once. Alembic leaves that locking to the caller, so we
would write the same lock around it plus an env.py and a script directory. Here the lock is a
PostgreSQL advisory lock held for the migrating transaction (DDL is transactional there), and for
SQLite, which is local by nature, an `fcntl` lock on a file next to the database.
Add a step by appending `(version, description, function)` to `MIGRATIONS`; never edit a shipped one.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Column, Connection, Engine, Float, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.schema import CreateTable

from steer_serve.experiments import db_schema, rollups

_ADVISORY_LOCK_KEY = 0x5733_7251  # any constant shared by every steer-serve replica

_bookkeeping = MetaData()
schema_migrations = Table(
    "schema_migrations", _bookkeeping,
    Column("version", Integer, primary_key=True),
    Column("description", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)


def _initial_tables(connection: Connection) -> None:
    connection.execute(CreateTable(db_schema.exposures))  # its version-1 index only, as shipped
    connection.execute(text(f"CREATE INDEX {db_schema.OLD_ARM_INDEX} ON exposures (experiment, version, outcome, arm)"))
    for table in (db_schema.feedback, db_schema.control):
        table.create(connection)  # with its indexes


def _rollups(connection: Connection) -> None:
    """Roll-up tables and the latency indexes, then the roll-ups of the rows already stored."""
    connection.execute(text(f"DROP INDEX IF EXISTS {db_schema.OLD_ARM_INDEX}"))
    for index in db_schema.LATENCY_INDEXES:
        index.create(connection)
    for table in db_schema.ROLLUP_TABLES:
        table.create(connection)
    rollups.rebuild(connection)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "exposures, feedback, experiment_control with their indexes", _initial_tables),
    (2, "roll-ups (per bucket sums, latency histograms, units, counters) built from the stored rows", _rollups),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply the migrations up to `target` this database lacks, under a lock; returns the versions applied now."""
    with _migration_lock(engine), engine.begin() as connection:
        lock_writers(connection)
        schema_migrations.create(connection, checkfirst=True)
        done = set(connection.scalars(select(schema_migrations.c.version)))
        applied = []
        for version, description, step in MIGRATIONS:
            if version in done or version > target:
                continue
            step(connection)
            connection.execute(insert(schema_migrations).values(version=version, description=description,
                                                                applied_at=time.time()))
            applied.append(version)
        return applied


def lock_writers(connection: Connection) -> None:
    """Serialise writers with each other and with migrations for the rest of the transaction:
    the roll-ups read rows another writer may be inserting (PostgreSQL; SQLite has one writer anyway)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})


def current_version(engine: Engine) -> int | None:
    with engine.connect() as connection:
        if not engine.dialect.has_table(connection, "schema_migrations"):
            return None
        return connection.scalar(select(schema_migrations.c.version).order_by(schema_migrations.c.version.desc()))


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield  # PostgreSQL: the advisory lock inside the transaction does it
        return
    with open(Path(database).with_name(Path(database).name + ".migrate.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
