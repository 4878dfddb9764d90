"""The experiment database's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Core rather than the ORM: the store only bulk-inserts rows and runs aggregates, and Core keeps
both as plain SQL. Exposures are keyed by the response id and feedback by an id minted when it
is posted, so a spooled batch inserted twice (`ON CONFLICT DO NOTHING`) still lands once.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table

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
    # every results query filters on these three first, then groups by arm
    Index("exposures_experiment_version_outcome_arm", "experiment", "version", "outcome", "arm"),
)

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
