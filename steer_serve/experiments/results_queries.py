"""The SQL behind the results: reads of the roll-ups (`rollups.py`), never a scan of every row.

Per arm: totals from the coarsest roll-up level, distinct units, and quantiles from the latency
histograms. Per arm and time bucket at the level the timeline chose: the sums the sequential
tests need (n, sum, sum of squares) for the guardrails and every feedback metric, grouped into
looks here. One quantity is read from the rows: how many requests were slower than control's p95,
a threshold known only now; a covering index makes that a range scan over the slow rows alone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, and_, cast, false, func, select

from steer_serve.experiments import latency_sketch
from steer_serve.experiments.db_schema import (exposures, rollup_arms, rollup_counters, rollup_exposures,
                                               rollup_feedback, rollup_latency)
from steer_serve.experiments.rollups import UNMATCHED
from steer_serve.experiments.store import ExperimentStore
from steer_serve.experiments.time_buckets import LEVELS_MS, Timeline

QUANTILE_POINTS = (0.5, 0.9, 0.95, 0.99)
P95 = QUANTILE_POINTS.index(0.95)
_TOTALS_LEVEL = LEVELS_MS[-1]  # every level has the same totals; the coarsest has the fewest rows


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
    """n, sum and sum of squares of one quantity in one (arm, look)."""

    n: int
    total: float
    squares: float


def arm_rows(store: ExperimentStore, key: str, version: int) -> dict[str, ArmRow]:
    r = rollup_exposures.c
    totals = store.read(
        select(r.arm, func.sum(r.requests), func.sum(r.errors), func.sum(r.tokens_n), func.sum(r.tokens_sum),
               func.min(r.first_ts), func.max(r.last_ts))
        .where(r.experiment == key, r.version == version, r.level_ms == _TOTALS_LEVEL, r.outcome == "assigned")
        .group_by(r.arm))
    units = dict(store.read(select(rollup_arms.c.arm, rollup_arms.c.units)
                            .where(rollup_arms.c.experiment == key, rollup_arms.c.version == version)))
    h = rollup_latency.c
    histograms: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for arm, quantity, index, count in store.read(select(h.arm, h.quantity, h.bin, h.count)
                                                  .where(h.experiment == key, h.version == version)):
        histograms[(arm, quantity)][index] = count
    return {arm: ArmRow(arm, int(requests), int(units.get(arm, 0)), int(errors),
                        latency_sketch.quantiles(histograms[(arm, "latency")], QUANTILE_POINTS),
                        latency_sketch.quantiles(histograms[(arm, "ttft")], QUANTILE_POINTS),
                        float(tokens_sum) / int(tokens_n) if tokens_n else None, float(first), float(last))
            for arm, requests, errors, tokens_n, tokens_sum, first, last in totals}


def killed_counts(store: ExperimentStore, key: str, version: int) -> dict[str, int]:
    """Kill-switched requests per arm the unit was assigned to."""
    r = rollup_exposures.c
    query = (select(r.arm, func.sum(r.requests))
             .where(r.experiment == key, r.version == version, r.level_ms == _TOTALS_LEVEL, r.outcome == "killed")
             .group_by(r.arm))
    return {arm: int(count) for arm, count in store.read(query)}


def guardrail_sums(store: ExperimentStore, key: str, version: int, timeline: Timeline,
                   latency_p95: float | None, ttft_p95: float | None) -> dict[tuple[str, int], dict[str, Sums]]:
    """(arm, look) -> guardrail -> sums. Shares are 0/1 values, so their sum of squares is their sum."""
    r = rollup_exposures.c
    query = (select(r.arm, r.bucket, r.requests, r.errors, r.ok, r.streamed, r.tokens_n, r.tokens_sum,
                    r.tokens_squares, r.length)
             .where(r.experiment == key, r.version == version, r.level_ms == timeline.level_ms,
                    r.outcome == "assigned"))
    slow = _slower_than(store, key, version, timeline, exposures.c.latency_s, latency_p95)
    slow_ttft = _slower_than(store, key, version, timeline, exposures.c.ttft_s, ttft_p95)
    totals: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0] * 8)
    for arm, index, *values in store.read(query):
        look = totals[(arm, timeline.look_of(index))]
        for i, value in enumerate(values):
            look[i] += value
    out: dict[tuple[str, int], dict[str, Sums]] = {}
    for (arm, look), (n, errors, n_ok, n_streamed, n_tokens, s_tokens, q_tokens, n_length) in totals.items():
        n_slow, n_slow_ttft = slow.get((arm, look), 0), slow_ttft.get((arm, look), 0)
        out[(arm, look)] = {
            "error_rate": Sums(n, errors, errors),
            "latency_above_control_p95": Sums(n_ok, n_slow, n_slow),
            "ttft_above_control_p95": Sums(n_streamed, n_slow_ttft, n_slow_ttft),
            "output_tokens": Sums(n_tokens, float(s_tokens), float(q_tokens)),
            "finish_length_share": Sums(n_ok, n_length, n_length),
        }
    return out


def _slower_than(store: ExperimentStore, key: str, version: int, timeline: Timeline, column: Any,
                 threshold: float | None) -> dict[tuple[str, int], int]:
    """(arm, look) -> successful requests with `column` above `threshold`, from the rows (index range scan)."""
    if threshold is None:
        return {}
    e = exposures.c
    bucket = (cast(func.floor(e.ts * 1000) if store.backend == "postgresql" else e.ts * 1000, BigInteger)
              // timeline.level_ms).label("bucket")  # PostgreSQL's cast rounds, SQLite's truncates (ts > 0)
    query = (select(e.arm, bucket, func.count())
             .where(and_(e.experiment == key, e.version == version, e.outcome == "assigned", e.error == false(),
                         column > threshold))
             .group_by(e.arm, bucket))
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for arm, index, count in store.read(query):
        counts[(arm, timeline.look_of(int(index)))] += count
    return counts


def feedback_sums(store: ExperimentStore, key: str, version: int,
                  timeline: Timeline) -> tuple[dict[tuple[str, str, int], Sums], dict[str, bool]]:
    """(metric, arm, look) -> sums over the latest value per (request, metric), and metric -> binary.
    The bucket is the exposure's, so a look at time t holds the requests served by t."""
    f = rollup_feedback.c
    query = (select(f.metric, f.arm, f.bucket, f.n, f.total, f.squares, f.binary_n)
             .where(f.experiment == key, f.version == version, f.level_ms == timeline.level_ms))
    totals: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for metric, arm, index, n, total, squares, binary_n in store.read(query):
        look = totals[(metric, arm, timeline.look_of(index))]
        look[0], look[1], look[2] = look[0] + n, look[1] + total, look[2] + squares
        counts[metric][0] += n
        counts[metric][1] += binary_n
    sums = {k: Sums(int(n), float(total), float(squares)) for k, (n, total, squares) in totals.items() if n}
    binary = {metric: n_binary == n for metric, (n, n_binary) in counts.items() if n}
    return sums, binary


def unmatched_feedback(store: ExperimentStore) -> int:
    """Feedback rows whose request id matches no exposure at all."""
    rows = store.read(select(rollup_counters.c.value).where(rollup_counters.c.name == UNMATCHED))
    return int(rows[0][0]) if rows else 0
