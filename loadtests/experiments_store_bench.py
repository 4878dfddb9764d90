"""Benchmark: experiment results from PostgreSQL at 1,000,000 exposures and 200,000 feedback rows.

    .venv/bin/python -m loadtests.experiments_store_bench --out loadtests/reports/experiments-store
    # or against an existing database: --experiments-db postgresql://user:pass@host/db (tables are created;
    # the benchmark's rows use experiment key `bench_store` and are left there)

Starts a throwaway PostgreSQL (Debian's server binaries) unless a URL is given, creates the
version-1 schema (rows only, no roll-ups), loads the rows with COPY, then runs the migration to
version 2, which builds the roll-ups from them (timed: what upgrading a filled database costs).
Then times what is measured: the full results computation (`compute_results`: per-arm totals and
quantiles, guardrail and feedback sums at up to 40 looks, sequential statistics, Holm, SRM), several
times, and the store's own batched insert path (rows + roll-ups in one transaction) for a slice of
extra rows. Writes bench.json and bench.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from loadtests.git_commit import current_commit
from sqlalchemy import func, select

from steer_serve.experiments.config import ExperimentConfig
from steer_serve.experiments.db_migrations import migrate
from steer_serve.experiments.db_schema import ROLLUP_TABLES
from steer_serve.experiments.results import compute_results
from steer_serve.experiments.store import ExperimentStore, database_url

KEY = "bench_store"
ARMS = ("control", "light", "strong")
CONFIG = ExperimentConfig.model_validate({
    "key": KEY, "salt": "bench", "status": "running", "version": 1, "arms": [
        {"name": "control", "weight": 2, "control": True},
        {"name": "light", "weight": 1, "interventions": [{"type": "add", "vector": "v", "scale": 0.2}]},
        {"name": "strong", "weight": 1, "interventions": [{"type": "add", "vector": "v", "scale": 0.6}]}]})


def load_rows(dsn: str, exposures: int, feedback: int, seed: int = 0) -> list[str]:
    """COPY `exposures` exposure rows over 14 days and `feedback` feedback rows; returns request ids."""
    rng = np.random.default_rng(seed)
    arm = rng.choice(len(ARMS), exposures, p=[0.5, 0.25, 0.25])
    ts = 1_700_000_000 + np.sort(rng.uniform(0, 14 * 86400, exposures))
    latency = rng.gamma(4.0, 0.1, exposures) * (1 + 0.1 * (arm == 2))
    ttft = latency * rng.uniform(0.05, 0.3, exposures)
    tokens = rng.integers(10, 200, exposures)
    error = rng.random(exposures) < 0.01
    ids = [f"cmpl-{uuid.UUID(int=int(x)).hex}" for x in rng.integers(0, 2**63, exposures)]
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        with cursor.copy("COPY exposures (request_id, ts, experiment, version, arm, assigned_arm, outcome, unit, "
                         "fingerprint, model, stream, status, error, ttft_s, latency_s, tokens, tokens_source, "
                         "finish_reason) FROM STDIN") as copy:
            for i in range(exposures):
                name = ARMS[arm[i]]
                copy.write_row((ids[i], float(ts[i]), KEY, 1, name, name, "assigned", f"u{i % 200_000}", None, "m",
                                bool(i % 3 == 0), 500 if error[i] else 200, bool(error[i]),
                                float(ttft[i]) if i % 3 == 0 else None, float(latency[i]), int(tokens[i]), "usage",
                                "length" if tokens[i] > 190 else "stop"))
        picked = rng.choice(exposures, feedback, replace=False)
        with cursor.copy("COPY feedback (id, ts, request_id, metric, value, \"binary\") FROM STDIN") as copy:
            for n, i in enumerate(picked):
                binary = n % 2 == 0
                value = float(rng.random() < 0.3 + 0.02 * arm[i]) if binary else float(rng.normal(3 + 0.05 * arm[i], 1))
                copy.write_row((uuid.uuid4().hex, float(ts[i]) + 60, ids[i], "liked" if binary else "rating", value, binary))
        cursor.execute("ANALYZE exposures; ANALYZE feedback")
    return ids


def time_results(store: ExperimentStore, repeats: int) -> tuple[list[float], dict]:
    timings, results = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        results = compute_results(CONFIG, store)
        timings.append(time.perf_counter() - started)
    return timings, results.model_dump()


def time_inserts(store: ExperimentStore, rows: int) -> float:
    """Rows per second through the store's batched, idempotent insert (what the outbox flusher uses),
    roll-ups included: 100 requests/s over three arms, varied latencies and units."""
    rng = np.random.default_rng(1)
    batch = [{"request_id": f"extra-{uuid.uuid4().hex}", "ts": 1_700_000_000.0 + i / 100, "experiment": "bench_insert",
              "version": 1, "arm": ARMS[i % 3], "assigned_arm": ARMS[i % 3], "outcome": "assigned", "unit": f"u{i % 5000}",
              "fingerprint": None, "model": "m", "stream": True, "status": 200, "error": False,
              "ttft_s": float(rng.uniform(0.01, 0.1)), "latency_s": float(rng.gamma(4.0, 0.1)), "tokens": 5,
              "tokens_source": "usage", "finish_reason": "stop"} for i in range(rows)]
    started = time.perf_counter()
    for i in range(0, rows, 5000):
        store.insert_exposures(batch[i:i + 5000])
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments-db", default=None, help="postgresql://...; default: a throwaway server")
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--feedback", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="loadtests/reports/experiments-store")
    args = parser.parse_args()
    server = None
    url = args.experiments_db
    if url is None:
        from loadtests.postgres_server import PostgresServer

        server = PostgresServer().start()
        url = server.new_database()
    try:
        store = ExperimentStore(database_url(url, None))
        migrate(store.engine, target=1)
        started = time.perf_counter()
        load_rows(url.replace("postgresql+psycopg://", "postgresql://"), args.exposures, args.feedback)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        store.migrate()
        migrate_s = time.perf_counter() - started
        postgres = store.read(select(func.version()))[0][0].split(" on ")[0]
        rollup_rows = {table.name: store.read(select(func.count()).select_from(table))[0][0] for table in ROLLUP_TABLES}
        timings, results = time_results(store, args.repeats)
        insert_rate = time_inserts(store, 10_000)
    finally:
        if server is not None:
            server.stop()
    write(Path(args.out), args, {"copy_load_s": load_s, "migration_rollups_s": migrate_s, "rollup_rows": rollup_rows,
                                 "postgres": postgres},
          timings, insert_rate, results)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def write(out: Path, args: argparse.Namespace, loading: dict, timings: list[float], insert_rate: float,
          results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {"exposures": args.exposures, "feedback": args.feedback, "repeats": args.repeats,
               "results_s": timings, "results_median_s": statistics.median(timings), "results_max_s": max(timings),
               "store_insert_rows_per_s": insert_rate, **loading,
               "machine": f"{_cpu()}, {os.cpu_count()} cores, python {platform.python_version()}, {loading['postgres']}",
               "commit": current_commit(), "comparisons": len(results["metrics"]) + len(results["guardrails"]),
               "arms": {a["name"]: a["requests"] for a in results["arms"]},
               "looks": max(len(c["trajectory"]) for c in results["guardrails"])}
    (out / "bench.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Experiment store benchmark ({args.exposures:,} exposures, {args.feedback:,} feedback, PostgreSQL)", "",
             f"- results (`compute_results`, all queries + statistics): median {summary['results_median_s']:.3f} s, "
             f"max {summary['results_max_s']:.3f} s over {args.repeats} runs ({', '.join(f'{t:.3f}' for t in timings)})",
             f"- store inserts with their roll-ups (batches of 5,000, one transaction each): {insert_rate:,.0f} rows/s",
             f"- loading the rows with COPY into the version-1 schema: {loading['copy_load_s']:.1f} s; the migration "
             f"to version 2 building the roll-ups from them: {loading['migration_rollups_s']:.1f} s",
             f"- roll-up rows: {loading['rollup_rows']}",
             f"- {summary['comparisons']} comparisons with confidence sequences at {summary['looks']} looks; "
             f"arms {summary['arms']}",
             f"- machine: {summary['machine']}; commit {summary['commit']}", ""]
    (out / "bench.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
