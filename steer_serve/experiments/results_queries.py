"""The SQL behind the results: a handful of GROUP BY queries, never a scan in Python.

Everything is aggregated in the database: per arm (counts, distinct units, quantiles), and per
arm and time bucket the sums the sequential tests need (n, sum, sum of squares), for the
guardrails and for every feedback metric. Cumulating the buckets gives the statistic at each
look, so the confidence sequence over time costs no extra pass over the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, case, cast, func, literal, select

from steer_serve.experiments.db_schema import exposures, feedback
from steer_serve.experiments.sql_quantiles import as_list, quantiles
from steer_serve.experiments.store import ExperimentStore

QUANTILE_POINTS = (0.5, 0.9, 0.95, 0.99)
P95 = QUANTILE_POINTS.index(0.95)


@dataclass(frozen=True)
class ArmRow:
    arm: str
    requests: int
    units: int
    errors: int
    latency: list[float] | None
    ttft: list[float] | None
    mean_tokens: float | None
    first_ts: float
    last_ts: float


@dataclass(frozen=True)
class Sums:
    """n, sum and sum of squares of one quantity in one (arm, bucket)."""

    n: int
    total: float
    squares: float


def _served(key: str, version: int) -> Any:
    return and_(exposures.c.experiment == key, exposures.c.version == version, exposures.c.outcome == "assigned")


def arm_rows(store: ExperimentStore, key: str, version: int) -> dict[str, ArmRow]:
    ok = exposures.c.error.is_(False)
    query = (select(exposures.c.arm, func.count(), func.count(exposures.c.unit.distinct()),
                    func.count().filter(exposures.c.error.is_(True)),
                    quantiles(case((ok, exposures.c.latency_s)), QUANTILE_POINTS),
                    quantiles(case((ok, exposures.c.ttft_s)), QUANTILE_POINTS),
                    func.avg(case((ok, exposures.c.tokens))), func.min(exposures.c.ts), func.max(exposures.c.ts))
             .where(_served(key, version)).group_by(exposures.c.arm))
    rows = store.read(query)
    return {r[0]: ArmRow(r[0], r[1], r[2], r[3], as_list(r[4]), as_list(r[5]),
                         None if r[6] is None else float(r[6]), float(r[7]), float(r[8])) for r in rows}


def killed_counts(store: ExperimentStore, key: str, version: int) -> dict[str, int]:
    query = (select(exposures.c.assigned_arm, func.count())
             .where(exposures.c.experiment == key, exposures.c.version == version, exposures.c.outcome == "killed")
             .group_by(exposures.c.assigned_arm))
    return {arm: count for arm, count in store.read(query)}


def _bucket(store: ExperimentStore, ts_column: Any, start_ms: int, width_ms: int) -> Any:
    """Integer bucket of a timestamp, floored identically on both backends (PostgreSQL's cast
    rounds, SQLite's truncates, so PostgreSQL floors first), then integer division."""
    millis = ts_column * 1000
    if store.backend == "postgresql":
        millis = func.floor(millis)
    return (cast(millis, BigInteger) - literal(start_ms)) // literal(width_ms)


def guardrail_sums(store: ExperimentStore, key: str, version: int, start_ms: int, width_ms: int,
                   latency_p95: float | None, ttft_p95: float | None) -> dict[tuple[str, int], dict[str, Sums]]:
    """(arm, bucket) -> guardrail -> sums. Shares are 0/1 values, so their sum of squares is their sum."""
    e = exposures.c
    ok = e.error.is_(False)
    bucket = _bucket(store, e.ts, start_ms, width_ms).label("bucket")
    error = cast(e.error, Integer)
    above_latency = case((and_(ok, e.latency_s > (latency_p95 if latency_p95 is not None else float("inf"))), 1), else_=0)
    streamed = and_(ok, e.ttft_s.is_not(None))
    above_ttft = case((and_(streamed, e.ttft_s > (ttft_p95 if ttft_p95 is not None else float("inf"))), 1), else_=0)
    tokens = case((ok, e.tokens))
    length = case((and_(ok, e.finish_reason == "length"), 1), else_=0)
    query = (select(e.arm, bucket, func.count(), func.sum(error), func.count().filter(ok), func.sum(above_latency),
                    func.count().filter(streamed), func.sum(above_ttft), func.count(tokens), func.sum(tokens),
                    func.sum(tokens * tokens), func.sum(length))
             .where(_served(key, version)).group_by(e.arm, bucket))
    out: dict[tuple[str, int], dict[str, Sums]] = {}
    for arm, index, n, errors, n_ok, n_slow, n_streamed, n_slow_ttft, n_tokens, s_tokens, q_tokens, n_length in store.read(query):
        out[(arm, int(index))] = {
            "error_rate": Sums(n, errors or 0, errors or 0),
            "latency_above_control_p95": Sums(n_ok, n_slow or 0, n_slow or 0),
            "ttft_above_control_p95": Sums(n_streamed, n_slow_ttft or 0, n_slow_ttft or 0),
            "output_tokens": Sums(n_tokens, float(s_tokens or 0), float(q_tokens or 0)),
            "finish_length_share": Sums(n_ok, n_length or 0, n_length or 0),
        }
    return out


def feedback_sums(store: ExperimentStore, key: str, version: int, start_ms: int,
                  width_ms: int) -> tuple[dict[tuple[str, str, int], Sums], dict[str, bool]]:
    """(metric, arm, bucket) -> sums over the latest value per (request, metric), and metric -> binary.
    The bucket is the exposure's, so a look at time t holds the requests served by t."""
    f = feedback.c
    rank = func.row_number().over(partition_by=(f.request_id, f.metric), order_by=(f.ts.desc(), f.id.desc()))
    latest = select(f.request_id, f.metric, f.value, f.binary, rank.label("rank")).subquery()
    bucket = _bucket(store, exposures.c.ts, start_ms, width_ms).label("bucket")
    query = (select(latest.c.metric, exposures.c.arm, bucket, func.count(), func.sum(latest.c.value),
                    func.sum(latest.c.value * latest.c.value), func.min(cast(latest.c.binary, Integer)))
             .select_from(latest.join(exposures, exposures.c.request_id == latest.c.request_id))
             .where(latest.c.rank == 1, _served(key, version))
             .group_by(latest.c.metric, exposures.c.arm, bucket))
    sums: dict[tuple[str, str, int], Sums] = {}
    binary: dict[str, bool] = {}
    for metric, arm, index, n, total, squares, all_binary in store.read(query):
        sums[(metric, arm, int(index))] = Sums(n, float(total), float(squares))
        binary[metric] = binary.get(metric, True) and bool(all_binary)
    return sums, binary


def unmatched_feedback(store: ExperimentStore) -> int:
    """Feedback rows whose request id matches no exposure at all."""
    query = select(func.count()).select_from(feedback).where(
        ~select(exposures.c.request_id).where(exposures.c.request_id == feedback.c.request_id).exists())
    return int(store.read(query)[0][0])

