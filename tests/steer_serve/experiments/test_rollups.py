"""Roll-ups on both backends: results read from them equal results computed from the raw rows
with numpy, when batches are resent, keys repeat inside a batch, feedback arrives before its
exposure and newer values replace older ones; a rebuild from the rows gives the same roll-ups;
the migration to schema version 2 builds them for a database filled without them."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sqlalchemy import insert, select

from steer_serve.experiments import latency_sketch, rollups, sequential
from steer_serve.experiments.config import ExperimentConfig
from steer_serve.cli import main
from steer_serve.experiments.db_migrations import current_version, migrate
from steer_serve.experiments.db_schema import ROLLUP_TABLES, exposures, feedback
from steer_serve.experiments.results import compute_results
from steer_serve.experiments.store import ExperimentStore
from steer_serve.experiments.time_buckets import LOOKS, Timeline
from harness.experiments import exposure_row, feedback_row, write_experiments

T0 = 1_700_000_000.0
_TINY = latency_sketch.MIN_VALUE * (1 + latency_sketch.ALPHA)  # the error allowed below 1 µs
ADD = [{"type": "add", "vector": "v", "layers": [1], "scale": 2.0}]
CONFIG_FILE = {"key": "e", "salt": "s", "status": "running", "version": 2, "arms": [
    {"name": "control", "weight": 2, "control": True}, {"name": "a", "weight": 1, "interventions": ADD},
    {"name": "b", "weight": 1, "interventions": ADD}]}
CONFIG = ExperimentConfig.model_validate(CONFIG_FILE)


def _rows(seed: int = 3) -> tuple[list[dict], list[dict]]:
    """~600 exposures over 2,000 s (errors, kills, other versions, missing TTFT/tokens) and ~900
    feedback rows: two values for many (request, metric) pairs, some for unknown requests."""
    rng = np.random.default_rng(seed)
    arms = ("control", "a", "b")
    exposure_rows, notes = [], []
    for i in range(600):
        arm = arms[rng.choice(3, p=[0.5, 0.25, 0.25])]
        changes = {"ts": float(T0 + rng.uniform(0, 2000)), "latency_s": float(rng.gamma(4, 0.1) + 0.1 * (arm == "b")),
                   "ttft_s": float(rng.uniform(0, 0.2)) if i % 3 else None, "tokens": int(rng.integers(1, 60)) if i % 7 else None,
                   "finish_reason": "length" if rng.random() < 0.2 else "stop", "unit": f"u{rng.integers(0, 200)}"}
        if rng.random() < 0.05:
            changes.update(error=True, status=500)
        served = arm
        if rng.random() < 0.03:  # kill-switched: served control, counted for the arm assigned
            changes.update(outcome="killed", assigned_arm=arm)
            served = "control"
        exposure_rows.append(exposure_row(i, served, version=1 if rng.random() < 0.05 else 2, **changes))
    for i in range(600):
        rid = f"chatcmpl-{i}"
        notes.append(feedback_row(rid, "rating", float(rng.normal(3 + 0.3 * (i % 3), 1)), ts=T0 + 3000 + i))
        if rng.random() < 0.5:  # a second value: newer or older than the first
            notes.append(feedback_row(rid, "rating", float(rng.normal(3, 1)), ts=T0 + 3000 + i + rng.choice([-1, 1])))
        if rng.random() < 0.2:
            notes.append(feedback_row(rid, "liked", bool(rng.random() < 0.4), ts=T0 + 3000))
    notes += [feedback_row(f"chatcmpl-unknown-{i}", "rating", 1.0) for i in range(5)]
    return exposure_rows, notes


def _insert_shuffled(store: ExperimentStore, exposure_rows: list[dict], notes: list[dict], seed: int = 5) -> None:
    """Everything in random order and random batches; a third of the batches sent twice (later),
    some with a key repeated inside the batch."""
    rng = random.Random(seed)
    records = [("exposure", r) for r in exposure_rows] + [("feedback", r) for r in notes]
    rng.shuffle(records)
    batches, resent, start = [], [], 0
    while start < len(records):
        size = rng.randint(1, 60)
        batch = records[start:start + size]
        start += size
        if rng.random() < 0.2:
            batch = batch + batch[:2]
        batches.append(batch)
        if rng.random() < 0.33:
            resent.append(batch)
    for batch in batches + resent:
        store.insert_exposures([r for kind, r in batch if kind == "exposure"])
        store.insert_feedback([r for kind, r in batch if kind == "feedback"])


def _raw(store: ExperimentStore) -> tuple[list[dict], dict[str, dict[str, dict]]]:
    """The stored rows; feedback as request -> metric -> latest row."""
    rows = [dict(r._mapping) for r in store.read(select(exposures))]
    latest: dict[str, dict[str, dict]] = {}
    for note in store.read(select(feedback).order_by(feedback.c.ts, feedback.c.id)):
        latest.setdefault(note.request_id, {})[note.metric] = dict(note._mapping)
    return rows, latest


def _values(rows: list[dict], latest: dict, name: str, arm: str, thresholds: dict[str, float]) -> tuple:
    """(ts, value) of one comparison's quantity for one arm, from the raw rows."""
    served = [r for r in rows if r["version"] == 2 and r["outcome"] == "assigned" and r["arm"] == arm]
    ok = [r for r in served if not r["error"]]
    picks = {
        "error_rate": [(r, float(r["error"])) for r in served],
        "latency_above_control_p95": [(r, float(r["latency_s"] > thresholds["latency"])) for r in ok],
        "ttft_above_control_p95": [(r, float(r["ttft_s"] > thresholds["ttft"])) for r in ok if r["ttft_s"] is not None],
        "output_tokens": [(r, float(r["tokens"])) for r in ok if r["tokens"] is not None],
        "finish_length_share": [(r, float(r["finish_reason"] == "length")) for r in ok],
    }.get(name)
    if picks is None:  # a feedback metric
        picks = [(r, float(latest[r["request_id"]][name]["value"])) for r in served
                 if name in latest.get(r["request_id"], {})]
    return np.array([r["ts"] for r, _ in picks]), np.array([v for _, v in picks])


def _reference_trajectory(ts: np.ndarray, values: np.ndarray, control_ts: np.ndarray, control: np.ndarray,
                          cutoffs: list[float]) -> list:
    looks = []
    for cutoff in cutoffs:
        t, c = values[ts < cutoff], control[control_ts < cutoff]
        looks.append(sequential.Look(len(t), _mean(t), _variance(t), len(c), _mean(c), _variance(c)))
    return sequential.trajectory(looks)  # a look with < 2 values in an arm has no point


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def _variance(values: np.ndarray) -> float:
    return float(values.var(ddof=1)) if len(values) > 1 else 0.0


def test_results_from_rollups_equal_results_from_the_raw_rows(store_url) -> None:
    store = ExperimentStore(store_url)
    store.migrate()
    _insert_shuffled(store, *_rows())
    results = compute_results(CONFIG, store)
    rows, latest = _raw(store)
    served = [r for r in rows if r["version"] == 2 and r["outcome"] == "assigned"]
    for arm in results.arms:
        mine = [r for r in served if r["arm"] == arm.name]
        ok = [r for r in mine if not r["error"]]
        assert (arm.requests, arm.units, arm.errors) == (len(mine), len({r["unit"] for r in mine}),
                                                          sum(r["error"] for r in mine))
        assert arm.killed == sum(1 for r in rows if r["version"] == 2 and r["outcome"] == "killed"
                                 and r["assigned_arm"] == arm.name)
        assert arm.mean_tokens == pytest.approx(np.mean([r["tokens"] for r in ok if r["tokens"] is not None]))
        for name, column in (("latency_s", "latency_s"), ("ttft_s", "ttft_s")):
            values = np.array([r[column] for r in ok if r[column] is not None])
            for point, estimate in getattr(arm, name).items():
                exact = np.quantile(values, int(point[1:]) / 100)
                assert abs(estimate - exact) <= latency_sketch.ALPHA * exact + _TINY
    assert results.feedback_unmatched == sum(1 for _ in store.read(select(feedback).where(
        ~feedback.c.request_id.in_(select(exposures.c.request_id)))))
    thresholds = {"latency": results.arms[0].latency_s["p95"], "ttft": results.arms[0].ttft_s["p95"]}
    timeline = Timeline.over(min(r["ts"] for r in served), max(r["ts"] for r in served))
    look_ends = [timeline.end_of(look) for look in range(timeline.looks)]
    assert timeline.looks == LOOKS
    compared = 0
    for row in [*results.metrics, *results.guardrails]:
        ts, values = _values(rows, latest, row.metric, row.arm, thresholds)
        control_ts, control = _values(rows, latest, row.metric, "control", thresholds)
        assert (row.n, row.control_n) == (len(values), len(control))
        assert row.mean == pytest.approx(values.mean(), rel=1e-9)
        reference = _reference_trajectory(ts, values, control_ts, control, look_ends)
        expected_points = [(end, p) for end, p in zip(look_ends, reference) if p is not None]
        assert [p.ts for p in row.trajectory] == [end for end, _ in expected_points]
        for point, (_, expected) in zip(row.trajectory, expected_points):
            assert (point.difference, point.ci_low, point.ci_high, point.p_value) == pytest.approx(
                (expected.difference, expected.ci_low, expected.ci_high, expected.p_value), rel=1e-9, abs=1e-12)
        compared += 1
    assert compared == 2 * 2 + 5 * 2 and {m.metric for m in results.metrics} == {"rating", "liked"}
    assert {m.kind for m in results.metrics if m.metric == "liked"} == {"binary"}


def _snapshot(store: ExperimentStore) -> dict[str, dict[tuple, tuple]]:
    """Every roll-up row by key (rows whose values are all 0 carry nothing and are left out)."""
    out = {}
    for table in ROLLUP_TABLES:
        keys = [c.name for c in table.primary_key.columns]
        values = [c.name for c in table.columns if not c.primary_key]
        out[table.name] = {tuple(r._mapping[k] for k in keys): tuple(float(r._mapping[v]) for v in values)
                           for r in store.read(select(table)) if not values or any(r._mapping[v] for v in values)}
    return out


def test_a_rebuild_from_the_rows_gives_the_same_rollups(store_url) -> None:
    store = ExperimentStore(store_url)
    store.migrate()
    _insert_shuffled(store, *_rows(seed=4), seed=9)
    incremental = _snapshot(store)
    with store.engine.begin() as connection:
        rollups.rebuild(connection)
    rebuilt = _snapshot(store)
    assert incremental.keys() == rebuilt.keys()
    for name in incremental:
        assert incremental[name].keys() == rebuilt[name].keys(), name
        for key, values in incremental[name].items():
            assert values == pytest.approx(rebuilt[name][key], rel=1e-9, abs=1e-9), (name, key)
    assert len(incremental["rollup_exposures"]) > 100 and len(incremental["rollup_feedback"]) > 100


def test_migration_to_version_2_builds_rollups_for_rows_stored_without_them(store_url, tmp_path) -> None:
    old = ExperimentStore(store_url)
    assert migrate(old.engine, target=1) == [1]
    exposure_rows, notes = _rows(seed=6)
    with old.engine.begin() as connection:  # as a version-1 server left them: rows, no roll-ups
        connection.execute(insert(exposures), exposure_rows)
        connection.execute(insert(feedback), notes)
    directory = write_experiments(tmp_path / "exp", CONFIG_FILE)
    assert main(["ab", "report", "e", "--experiments", str(directory), "--experiments-db", store_url]) == 0
    assert current_version(old.engine) == 2  # `ab report` ran the migration first
    fresh = ExperimentStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.migrate()
    _insert_shuffled(fresh, exposure_rows, notes)
    assert _rounded(compute_results(CONFIG, old)) == _rounded(compute_results(CONFIG, fresh))


def _rounded(results) -> str:
    from tests.steer_serve.experiments.test_experiment_results import _rounded as rounded

    return rounded(results)


def test_sketch_quantiles_are_within_alpha_of_numpy() -> None:
    rng = np.random.default_rng(0)
    for values in (rng.lognormal(-1, 1, 5000), rng.uniform(0.2, 0.3, 7), np.array([0.0, 0.0, 1e-3, 2.0])):
        counts: dict[int, int] = {}
        for value in values:
            counts[latency_sketch.bin_of(value)] = counts.get(latency_sketch.bin_of(value), 0) + 1
        points = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
        for estimate, exact in zip(latency_sketch.quantiles(counts, points), np.quantile(values, points)):
            assert abs(estimate - exact) <= latency_sketch.ALPHA * exact + _TINY
    assert latency_sketch.quantiles({}, (0.5,)) is None


def test_timeline_picks_the_finest_level_with_at_most_4000_buckets() -> None:
    short = Timeline.over(T0, T0 + 599.5)
    assert (short.level_ms, short.looks) == (10_000, 30) and short.end_of(short.looks - 1) >= T0 + 599.5
    weeks = Timeline.over(T0, T0 + 14 * 86400)
    assert weeks.level_ms == 1_000_000 and weeks.looks == 40
    assert Timeline.over(T0, T0 + 35).looks == 4  # one look per 10 s bucket while the span is short
    for span in np.geomspace(400, 3e9, 200):
        timeline = Timeline.over(T0, T0 + span)
        assert 21 <= timeline.looks <= 40 and timeline.look_of(timeline.first) == 0
