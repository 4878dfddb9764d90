"""Set-based SQL that recomputes the roll-up sums from the stored rows (the migration that
introduces roll-ups runs it over databases of any size, so nothing here loops in Python).

Each statement is the GROUP BY twin of what `rollups.py` adds per inserted row; the time bucket is
`floor(ts * 1000) // level_ms` in integer arithmetic on both backends (PostgreSQL floors before its
rounding cast, SQLite's cast truncates positive values), the latest feedback per (request, metric)
is the newest by (ts, id) with ids compared bytewise (`COLLATE "C"` on PostgreSQL).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Connection, Float, Integer, and_, case, cast, false, func, insert, literal, select

from steer_serve.experiments.db_schema import (exposures, feedback, rollup_arms, rollup_exposures, rollup_feedback,
                                               rollup_units)
from steer_serve.experiments.time_buckets import LEVELS_MS


def bucket(connection: Connection, ts: Any, level_ms: int) -> Any:
    millis = ts * 1000
    if connection.dialect.name == "postgresql":
        millis = func.floor(millis)
    return cast(millis, BigInteger) // level_ms


def exposure_sums(connection: Connection) -> None:
    e = exposures.c
    ok = e.error == false()

    def count_if(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))
    tokens = case((and_(ok, e.tokens.is_not(None)), cast(e.tokens, Float)))
    arm = case((e.outcome == "assigned", e.arm), else_=e.assigned_arm)
    for level_ms in LEVELS_MS:
        b = bucket(connection, e.ts, level_ms)
        query = (select(e.experiment, e.version, literal(level_ms, BigInteger), b, e.outcome, arm, func.count(),
                        count_if(e.error == True), count_if(ok), count_if(and_(ok, e.ttft_s.is_not(None))),  # noqa: E712
                        count_if(tokens.is_not(None)), count_if(and_(ok, e.finish_reason == "length")),
                        func.coalesce(func.sum(tokens), 0.0), func.coalesce(func.sum(tokens * tokens), 0.0),
                        func.min(e.ts), func.max(e.ts))
                 .group_by(e.experiment, e.version, b, e.outcome, arm))
        names = ["experiment", "version", "level_ms", "bucket", "outcome", "arm", "requests", "errors", "ok",
                 "streamed", "tokens_n", "length", "tokens_sum", "tokens_squares", "first_ts", "last_ts"]
        connection.execute(insert(rollup_exposures).from_select(names, query))


def feedback_sums(connection: Connection) -> None:
    f, e = feedback.c, exposures.c
    tie = f.id.collate("C") if connection.dialect.name == "postgresql" else f.id
    rank = func.row_number().over(partition_by=(f.request_id, f.metric), order_by=(f.ts.desc(), tie.desc()))
    latest = select(f.request_id, f.metric, f.value, f.binary, rank.label("rank")).subquery()
    for level_ms in LEVELS_MS:
        b = bucket(connection, e.ts, level_ms)
        query = (select(e.experiment, e.version, literal(level_ms, BigInteger), b, e.arm, latest.c.metric,
                        func.count(), func.sum(cast(latest.c.binary, Integer)), func.sum(latest.c.value),
                        func.sum(latest.c.value * latest.c.value))
                 .select_from(latest.join(exposures, e.request_id == latest.c.request_id))
                 .where(latest.c.rank == 1, e.outcome == "assigned")
                 .group_by(e.experiment, e.version, b, e.arm, latest.c.metric))
        names = ["experiment", "version", "level_ms", "bucket", "arm", "metric", "n", "binary_n", "total", "squares"]
        connection.execute(insert(rollup_feedback).from_select(names, query))


def units(connection: Connection) -> None:
    e, u = exposures.c, rollup_units.c
    connection.execute(insert(rollup_units).from_select(
        ["experiment", "version", "arm", "unit"],
        select(e.experiment, e.version, e.arm, e.unit).where(e.outcome == "assigned").distinct()))
    connection.execute(insert(rollup_arms).from_select(
        ["experiment", "version", "arm", "units"],
        select(u.experiment, u.version, u.arm, func.count()).group_by(u.experiment, u.version, u.arm)))


def unmatched(connection: Connection) -> int:
    """Feedback rows whose request id matches no exposure."""
    query = select(func.count()).select_from(feedback).where(
        ~select(exposures.c.request_id).where(exposures.c.request_id == feedback.c.request_id).exists())
    return int(connection.scalar(query) or 0)
