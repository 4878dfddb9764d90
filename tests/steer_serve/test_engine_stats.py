"""Live counts over ranks: the ranks of one data-parallel engine hold the same requests, engines different ones."""

from __future__ import annotations

from steer_serve.engine_stats import EngineSteeringStats, WorkerSteeringStats


def _worker(dp_rank: int, rank: int, live: int) -> WorkerSteeringStats:
    return WorkerSteeringStats(rank=rank, dp_rank=dp_rank, pp_rank=rank, live_requests=live,
                               live_configurations=live, resident_slots=live, slot_capacity=8, table_bytes=1)


def test_ranks_of_one_engine_are_not_double_counted() -> None:
    stats = EngineSteeringStats(workers=[_worker(0, 0, 3), _worker(0, 1, 3)])
    assert (stats.live_requests, stats.live_configurations) == (3, 3)


def test_data_parallel_engines_add_up() -> None:
    stats = EngineSteeringStats(workers=[_worker(0, 0, 2), _worker(1, 0, 5)])
    assert stats.live_requests == 7


def test_old_answers_without_parallel_ranks_still_validate() -> None:
    answer = {"rank": 0, "live_requests": 0, "live_configurations": 0, "resident_slots": 0, "slot_capacity": 8,
              "table_bytes": 1}
    assert WorkerSteeringStats.model_validate(answer).dp_rank == 0
