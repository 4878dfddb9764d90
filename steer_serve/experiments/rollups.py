"""Roll-ups: what the results need, kept up to date in the transaction that inserts the rows.

The store passes only the rows its `INSERT ... ON CONFLICT DO NOTHING RETURNING` reported new, so
a resent outbox batch changes nothing here either. Per experiment, version, time bucket (every
level of `time_buckets`), outcome and arm: requests, errors, successes, streamed successes,
output tokens (count, sum, sum of squares), `finish_reason: length`, first and last timestamp.
Per arm: latency / TTFT histograms (`latency_sketch`) and the set of units with its size. Per
bucket, arm and metric: n, sum and sum of squares of the latest feedback value per
(request, metric), in the bucket of the request's exposure; and a store-wide count of feedback
whose request has no exposure.

Feedback and its exposure arrive in either order (different replicas, outboxes flushed at
different times), so both sides do the join: new exposures fold in the feedback already stored for
them; new feedback counts only when its exposure is stored and it became the latest value of its
(request, metric), replacing the previous latest. Writers are serialised (a PostgreSQL advisory
lock, SQLite's single writer), so those reads see every committed row. `rebuild` recomputes
everything from the rows (the migration to schema version 2 runs it); a test checks that it
gives exactly what the inserts built.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, delete, false, func, select
from sqlalchemy.dialects import postgresql, sqlite

from steer_serve.experiments import latency_sketch, rebuild_sql
from steer_serve.experiments.db_schema import (ROLLUP_TABLES, exposures, feedback, rollup_arms, rollup_counters,
                                               rollup_exposures, rollup_feedback, rollup_latency, rollup_units)
from steer_serve.experiments.time_buckets import LEVELS_MS, bucket

UNMATCHED = "feedback_unmatched"
_IN_CHUNK = 1000  # request ids per IN (...) list
_REBUILD_CHUNK = 5000

Row = Mapping[str, Any]


def apply_exposures(connection: Connection, rows: Sequence[Row]) -> None:
    """Count exposures that were just inserted."""
    if not rows:
        return
    _add(connection, rollup_exposures, _exposure_sums(rows))
    _add(connection, rollup_latency, _histograms(rows))
    _count_units(connection, [r for r in rows if r["outcome"] == "assigned"])
    _fold_stored_feedback(connection, rows)


def apply_feedback(connection: Connection, rows: Sequence[Row]) -> None:
    """Count feedback rows that were just inserted."""
    if not rows:
        return
    new_ids = {r["id"] for r in rows}
    request_ids = sorted({r["request_id"] for r in rows})
    served = _exposures_of(connection, request_ids)
    stored = _feedback_of(connection, request_ids)  # includes the new rows: same transaction
    deltas: dict[tuple, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for request_id, metric in sorted({(r["request_id"], r["metric"]) for r in rows}):
        exposure = served.get(request_id)
        if exposure is None or exposure["outcome"] != "assigned":
            continue
        pair = stored[(request_id, metric)]
        after = _latest(pair)
        before = _latest([r for r in pair if r["id"] not in new_ids])
        if before is not None and before["id"] == after["id"]:
            continue
        _feedback_delta(deltas, exposure, metric, after, +1)
        if before is not None:
            _feedback_delta(deltas, exposure, metric, before, -1)
    _add(connection, rollup_feedback, _feedback_rows(deltas))
    _add_unmatched(connection, sum(1 for r in rows if r["request_id"] not in served))


def rebuild(connection: Connection) -> None:
    """Recompute every roll-up from the stored rows: set-based SQL (the same integer bucket
    arithmetic as `time_buckets.bucket`), and the latency histograms from the rows streamed once,
    binned by the same Python function as at insert."""
    for table in ROLLUP_TABLES:
        connection.execute(delete(table))
    rebuild_sql.exposure_sums(connection)
    rebuild_sql.feedback_sums(connection)
    rebuild_sql.units(connection)
    _add_unmatched(connection, rebuild_sql.unmatched(connection))
    e = exposures.c
    query = select(e.experiment, e.version, e.arm, e.outcome, e.error, e.latency_s, e.ttft_s).where(
        e.outcome == "assigned", e.error == false())
    result = connection.execute(query, execution_options={"stream_results": True, "yield_per": _REBUILD_CHUNK})
    counts: Counter[tuple] = Counter()
    for rows in result.mappings().partitions():
        for key, n in _histogram_counts(rows).items():
            counts[key] += n
    _add(connection, rollup_latency, [_keyed(rollup_latency, key, {"count": n}) for key, n in counts.items()])


def _exposure_sums(rows: Iterable[Row]) -> list[dict[str, Any]]:
    sums: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        ok = not r["error"]
        tokens = r["tokens"] if ok and r["tokens"] is not None else None
        arm = r["arm"] if r["outcome"] == "assigned" else r["assigned_arm"]
        for level_ms in LEVELS_MS:
            key = (r["experiment"], r["version"], level_ms, bucket(r["ts"], level_ms), r["outcome"], arm)
            s = sums.get(key)
            if s is None:
                s = sums[key] = {"requests": 0, "errors": 0, "ok": 0, "streamed": 0, "tokens_n": 0, "length": 0,
                                 "tokens_sum": 0.0, "tokens_squares": 0.0, "first_ts": r["ts"], "last_ts": r["ts"]}
            s["requests"] += 1
            s["errors"] += int(not ok)
            s["ok"] += int(ok)
            s["streamed"] += int(ok and r["ttft_s"] is not None)
            s["length"] += int(ok and r["finish_reason"] == "length")
            if tokens is not None:
                s["tokens_n"] += 1
                s["tokens_sum"] += float(tokens)
                s["tokens_squares"] += float(tokens) * float(tokens)
            s["first_ts"], s["last_ts"] = min(s["first_ts"], r["ts"]), max(s["last_ts"], r["ts"])
    return [_keyed(rollup_exposures, key, values) for key, values in sums.items()]


def _histograms(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [_keyed(rollup_latency, key, {"count": n}) for key, n in _histogram_counts(rows).items()]


def _histogram_counts(rows: Iterable[Row]) -> Counter[tuple]:
    counts: Counter[tuple] = Counter()
    for r in rows:
        if r["outcome"] != "assigned" or r["error"]:
            continue
        counts[(r["experiment"], r["version"], r["arm"], "latency", latency_sketch.bin_of(r["latency_s"]))] += 1
        if r["ttft_s"] is not None:
            counts[(r["experiment"], r["version"], r["arm"], "ttft", latency_sketch.bin_of(r["ttft_s"]))] += 1
    return counts


def _count_units(connection: Connection, rows: Sequence[Row]) -> None:
    units = sorted({(r["experiment"], r["version"], r["arm"], r["unit"]) for r in rows})
    if not units:
        return
    c = rollup_units.c
    statement = _dialect(connection).insert(rollup_units).on_conflict_do_nothing().returning(
        c.experiment, c.version, c.arm)
    new = Counter(tuple(r) for r in connection.execute(statement, [_keyed(rollup_units, u, {}) for u in units]))
    _add(connection, rollup_arms, [_keyed(rollup_arms, key, {"units": n}) for key, n in new.items()])


def _fold_stored_feedback(connection: Connection, rows: Sequence[Row]) -> None:
    """New exposures take in the feedback that arrived before them (and it stops being unmatched)."""
    stored = _feedback_of(connection, sorted(r["request_id"] for r in rows))
    if not stored:
        return
    by_request = {r["request_id"]: r for r in rows}
    deltas: dict[tuple, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for (request_id, metric), pair in sorted(stored.items()):
        exposure = by_request[request_id]
        if exposure["outcome"] == "assigned":
            _feedback_delta(deltas, exposure, metric, _latest(pair), +1)
    _add(connection, rollup_feedback, _feedback_rows(deltas))
    _add_unmatched(connection, -sum(len(pair) for pair in stored.values()))


def _feedback_delta(deltas: dict[tuple, list[float]], exposure: Row, metric: str, note: Row, sign: int) -> None:
    value = float(note["value"])
    for level_ms in LEVELS_MS:
        key = (exposure["experiment"], exposure["version"], level_ms, bucket(exposure["ts"], level_ms),
               exposure["arm"], metric)
        d = deltas[key]
        d[0] += sign
        d[1] += sign * int(bool(note["binary"]))
        d[2] += sign * value
        d[3] += sign * value * value


def _feedback_rows(deltas: Mapping[tuple, list[float]]) -> list[dict[str, Any]]:
    return [_keyed(rollup_feedback, key, {"n": n, "binary_n": b, "total": t, "squares": q})
            for key, (n, b, t, q) in deltas.items()]


def _latest(rows: Sequence[Row]) -> Row | None:
    """The value that counts for a (request, metric): the newest, ties broken by id (as ever)."""
    return max(rows, key=lambda r: (r["ts"], r["id"]), default=None)


def _exposures_of(connection: Connection, request_ids: Sequence[str]) -> dict[str, Row]:
    e = exposures.c
    found: dict[str, Row] = {}
    for chunk in _chunks(request_ids):
        query = select(e.request_id, e.experiment, e.version, e.arm, e.outcome, e.ts).where(e.request_id.in_(chunk))
        found.update((r.request_id, dict(r._mapping)) for r in connection.execute(query))
    return found


def _feedback_of(connection: Connection, request_ids: Sequence[str]) -> dict[tuple[str, str], list[Row]]:
    f = feedback.c
    found: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for chunk in _chunks(request_ids):
        query = select(f.id, f.ts, f.request_id, f.metric, f.value, f.binary).where(f.request_id.in_(chunk))
        for r in connection.execute(query):
            found[(r.request_id, r.metric)].append(dict(r._mapping))
    return found


def _add_unmatched(connection: Connection, delta: int) -> None:
    if delta:
        _add(connection, rollup_counters, [{"name": UNMATCHED, "value": delta}])


def _add(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Upsert that adds each value to the stored one (first_ts/last_ts: min/max), in key order
    so that concurrent transactions never lock the same rows in opposite orders."""
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    rows.sort(key=lambda r: tuple(r[k] for k in keys))
    statement = _dialect(connection).insert(table)
    least, greatest = (func.least, func.greatest) if connection.dialect.name == "postgresql" else (func.min, func.max)
    updates = {}
    for column in table.columns:
        if column.primary_key:
            continue
        new = statement.excluded[column.name]
        updates[column.name] = (least(column, new) if column.name == "first_ts" else
                                greatest(column, new) if column.name == "last_ts" else column + new)
    connection.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), rows)


def _keyed(table: Table, key: tuple, values: dict[str, Any]) -> dict[str, Any]:
    names = [column.name for column in table.primary_key.columns]
    return {**dict(zip(names, key)), **values}


def _dialect(connection: Connection) -> Any:
    return postgresql if connection.dialect.name == "postgresql" else sqlite


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    return (items[i:i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK))
