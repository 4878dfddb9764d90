"""The experiment store: exposures, feedback, kill switches and the reload generation in one database.

One class serves both backends through SQLAlchemy: SQLite (a file; the embedded default, fine
for one machine and its API-server processes) and PostgreSQL (`postgresql://...`, for replicas on
several machines). What differs is kept to a few places: the inserts (both dialects spell
`ON CONFLICT DO NOTHING` / `DO UPDATE`), the writer and migration lock (`db_migrations`), and SQLite's
connection pragmas (WAL, so readers never block the writer). Every write is idempotent: spooled
batches may be sent again after a failure, and only rows really inserted reach the roll-ups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from steer_serve.experiments import db_schema, rollups
from steer_serve.experiments.records import ControlState
from steer_serve.experiments.db_migrations import lock_writers, migrate

CONNECT_TIMEOUT_S = 2  # a replica must notice an unreachable database quickly, not after minutes
_BATCH = 2000


class StoreUnavailable(RuntimeError):
    """The database cannot be reached or refused the operation (the message says which)."""


def database_url(url: str | None, default_sqlite: Path | None) -> str:
    """`postgresql://...` uses psycopg 3; no URL means the SQLite file `default_sqlite`."""
    if url is None:
        return f"sqlite:///{default_sqlite}"
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ValueError(f"--experiments-db must be postgresql://... or sqlite:///...; got {parsed.drivername!r}")
    return parsed.render_as_string(hide_password=False)


class ExperimentStore:
    def __init__(self, url: str) -> None:
        self.engine = _engine(url)
        self.backend = self.engine.dialect.name
        self.display_url = self.engine.url.render_as_string(hide_password=True)

    def migrate(self) -> list[int]:
        """Bring the schema up to date (safe from several replicas at once)."""
        return self._guard(lambda: migrate(self.engine))

    def insert_exposures(self, rows: Iterable[Mapping[str, Any]]) -> int:
        return self._insert_ignoring_duplicates(db_schema.exposures, list(rows), rollups.apply_exposures)

    def insert_feedback(self, rows: Iterable[Mapping[str, Any]]) -> int:
        return self._insert_ignoring_duplicates(db_schema.feedback, list(rows), rollups.apply_feedback)

    def read_control(self) -> ControlState:
        def read() -> ControlState:
            with self.engine.connect() as connection:
                values = dict(connection.execute(select(db_schema.control.c.name, db_schema.control.c.value)).all())
            killed = sorted(name[5:] for name, value in values.items() if name.startswith("kill:") and value
                            and name != "kill:*")
            return ControlState(kill_all=bool(values.get("kill:*", 0)), killed=killed,
                                generation=values.get("generation", 0))
        return self._guard(read)

    def set_kill_switch(self, key: str | None, engaged: bool) -> ControlState:
        """key None: every experiment. An upsert, so concurrent admin calls never lose each other's change."""
        self._guard(lambda: self._upsert_control(f"kill:{key or '*'}", int(engaged)))
        return self.read_control()

    def bump_generation(self) -> ControlState:
        def bump() -> None:
            with self.engine.begin() as connection:
                self._insert(connection, db_schema.control, [{"name": "generation", "value": 0}])
                connection.execute(update(db_schema.control).where(db_schema.control.c.name == "generation")
                                   .values(value=db_schema.control.c.value + 1))
        self._guard(bump)
        return self.read_control()

    def read(self, query: Any) -> list[Any]:
        """All rows of a SELECT (the results queries read the roll-ups)."""
        def run() -> list[Any]:
            with self.engine.connect() as connection:
                return list(connection.execute(query).all())
        return self._guard(run)

    def dispose(self) -> None:
        self.engine.dispose()

    def _upsert_control(self, name: str, value: int) -> None:
        with self.engine.begin() as connection:
            self._insert(connection, db_schema.control, [{"name": name, "value": value}])
            connection.execute(update(db_schema.control).where(db_schema.control.c.name == name).values(value=value))

    def _insert_ignoring_duplicates(self, table: Any, rows: list[Mapping[str, Any]],
                                    count: Callable[[Connection, Sequence[Mapping[str, Any]]], None]) -> int:
        """Insert in batches inside one transaction; rows whose key exists are skipped, and only the
        rows really inserted are counted into the roll-ups, in the same transaction. Returns rows new."""
        if not rows:
            return 0
        key = list(table.primary_key.columns)[0]

        def write() -> int:
            with self.engine.begin() as connection:
                lock_writers(connection)
                inserted = 0
                for i in range(0, len(rows), _BATCH):
                    batch = _first_of_each_key(rows[i:i + _BATCH], key.name)
                    new = self._insert(connection, table, batch)
                    count(connection, [row for row in batch if row[key.name] in new])
                    inserted += len(new)
                return inserted
        return self._guard(write)

    def _insert(self, connection: Any, table: Any, rows: list[Mapping[str, Any]]) -> set[Any]:
        """The keys of the rows inserted."""
        dialect = postgresql if self.backend == "postgresql" else sqlite
        key = list(table.primary_key.columns)[0]
        # RETURNING lists only the rows really inserted (rowcount is unreliable for executemany)
        statement = dialect.insert(table).on_conflict_do_nothing().returning(key)
        return {row[0] for row in connection.execute(statement, rows).all()}

    def _guard(self, operation: Any) -> Any:
        try:
            return operation()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"experiment store {self.display_url}: {_short(exc)}") from exc


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pool_pre_ping: after the database restarts, pooled connections are dead; check before use
    return create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=CONNECT_TIMEOUT_S,
                         connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


def _first_of_each_key(rows: list[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    """A batch may carry one key twice (an outbox line written twice): keep its first row, so the
    roll-ups count exactly the row the database kept."""
    seen: set[Any] = set()
    return [row for row in rows if not (row[key] in seen or seen.add(row[key]))]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers and the writer do not block each other
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _short(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    return str(original or exc).strip().splitlines()[0][:300]
