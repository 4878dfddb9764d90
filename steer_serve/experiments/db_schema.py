"""The experiment database's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Core rather than the ORM: the store only bulk-inserts rows and runs aggregates, and Core keeps
both as plain SQL. Exposures are keyed by the response id and feedback by an id minted when it
is posted, so a spooled batch inserted twice (`ON CONFLICT DO NOTHING`) still lands once.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table

metadata = MetaData()

exposures = Table(
    "exposures", metadata,
    Column("request_id", String(256), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("experiment", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("arm", String(64), nullable=False),
    Column("assigned_arm", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("fingerprint", String(64)),
    Column("model", String(256), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error", Boolean, nullable=False),
    Column("ttft_s", Float),
    Column("latency_s", Float, nullable=False),
    Column("tokens", Integer),
    Column("tokens_source", String(16)),
    Column("finish_reason", String(32)),
)
# The results count the requests slower than control's p95 per arm and time bucket straight from
# the rows: these covering indexes make that a range scan over the slow rows only.
LATENCY_INDEXES = (
    Index("exposures_latency", exposures.c.experiment, exposures.c.version, exposures.c.outcome, exposures.c.error,
          exposures.c.latency_s, exposures.c.arm, exposures.c.ts),
    Index("exposures_ttft", exposures.c.experiment, exposures.c.version, exposures.c.outcome, exposures.c.error,
          exposures.c.ttft_s, exposures.c.arm, exposures.c.ts),
)
# schema version 1 had this one; version 2 drops it (the roll-ups answer what it served)
OLD_ARM_INDEX = "exposures_experiment_version_outcome_arm"

feedback = Table(
    "feedback", metadata,
    Column("id", String(64), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("request_id", String(256), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("binary", Boolean, nullable=False),
    # "the last value per (request, metric) wins" is answered from this index
    Index("feedback_request_metric_ts", "request_id", "metric", "ts"),
)

control = Table(
    "experiment_control", metadata,
    # 'generation' (reload counter), 'kill:*' (every experiment), 'kill:<key>' -> 0/1
    Column("name", String(80), primary_key=True),
    Column("value", Integer, nullable=False),
)


# Roll-ups (schema version 2), maintained in the transaction that inserts the rows they count
# (`rollups.py`), so results read a few thousand rows whatever the traffic. See README "A/B experiments".

def _keys(*names: str) -> list[Column]:
    types = {"experiment": String(64), "version": Integer, "level_ms": BigInteger, "bucket": BigInteger,
             "outcome": String(16), "arm": String(64), "metric": String(64), "quantity": String(16), "bin": Integer,
             "unit": String(64)}
    return [Column(name, types[name], primary_key=True) for name in names]


def _counts(*names: str) -> list[Column]:
    return [Column(name, BigInteger, nullable=False) for name in names]


def _sums(*names: str) -> list[Column]:
    return [Column(name, Float, nullable=False) for name in names]


# per time bucket at each level; outcome 'killed' rows are keyed by the arm the unit was assigned
rollup_exposures = Table(
    "rollup_exposures", metadata,
    *_keys("experiment", "version", "level_ms", "bucket", "outcome", "arm"),
    *_counts("requests", "errors", "ok", "streamed", "tokens_n", "length"),
    *_sums("tokens_sum", "tokens_squares", "first_ts", "last_ts"),
)
# the latest feedback value per (request, metric), in the bucket of its exposure (outcome 'assigned')
rollup_feedback = Table(
    "rollup_feedback", metadata,
    *_keys("experiment", "version", "level_ms", "bucket", "arm", "metric"),
    *_counts("n", "binary_n"),
    *_sums("total", "squares"),
)
# latency / TTFT histograms per arm (latency_sketch bins) of assigned requests without error
rollup_latency = Table(
    "rollup_latency", metadata,
    *_keys("experiment", "version", "arm", "quantity", "bin"),
    *_counts("count"),
)
# distinct units per arm: the set (for idempotence) and its size
rollup_units = Table("rollup_units", metadata, *_keys("experiment", "version", "arm", "unit"))
rollup_arms = Table("rollup_arms", metadata, *_keys("experiment", "version", "arm"), *_counts("units"))
# store-wide counters: 'feedback_unmatched' (feedback rows whose request id has no exposure)
rollup_counters = Table(
    "rollup_counters", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
ROLLUP_TABLES = (rollup_exposures, rollup_feedback, rollup_latency, rollup_units, rollup_arms, rollup_counters)
