"""What each engine worker reports about its steering state (`GET /v1/steering/engine`).

Kept in the domain package so that tools (the soak test, dashboards) can read the route's
answer without importing vLLM. Leaks show up here first: a request that left the engine without
its slot being released stays counted in `live_requests` / `live_configurations` forever.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, NonNegativeInt


class WorkerSteeringStats(BaseModel):
    """One worker (one rank of one engine): its steering runtime's bookkeeping."""

    model_config = ConfigDict(extra="forbid")

    rank: NonNegativeInt  # the worker's rank in its engine (tensor x pipeline parallel)
    dp_rank: NonNegativeInt = 0  # which data-parallel engine
    pp_rank: NonNegativeInt = 0  # pipeline stage
    tp_rank: NonNegativeInt = 0  # tensor-parallel rank within the stage
    live_requests: NonNegativeInt  # steered requests the worker holds state for
    live_configurations: NonNegativeInt  # distinct steering fingerprints among them
    resident_slots: NonNegativeInt  # table slots holding a configuration (an LRU cache over live ones)
    slot_capacity: NonNegativeInt  # slots in the tables: min(max_num_seqs, --steering-slots)
    table_bytes: NonNegativeInt  # memory of the persistent steering tables on the worker's device
    vector_capacity: NonNegativeInt = 0  # rows of the shared vector pool configurations can use (--steering-memory)
    vectors_in_use: NonNegativeInt = 0  # pool rows held by resident configurations
    pool_bytes: NonNegativeInt = 0  # memory of the vector pool (part of table_bytes)
    observed_requests: NonNegativeInt = 0  # live requests holding an observation lane
    held_observations: NonNegativeInt = 0  # finished observations not yet fetched by the API
    observe_bytes: NonNegativeInt = 0  # memory of the observation buffers (stores, directions, indices)
    probe_positions: NonNegativeInt = 0  # probe-store rows (token positions; --observe-memory)
    probe_positions_in_use: NonNegativeInt = 0  # held by live observed requests with probes
    capture_vectors: NonNegativeInt = 0  # capture-store rows ([D] float32 vectors; --observe-memory)
    capture_vectors_in_use: NonNegativeInt = 0  # held by live observed requests with capture


class EngineSteeringStats(BaseModel):
    """Every worker's stats, in (data-parallel engine, rank) order."""

    model_config = ConfigDict(extra="forbid")

    object: str = "steering.engine"
    workers: list[WorkerSteeringStats]

    @property
    def live_requests(self) -> int:
        """Requests with steering state in the engine: every rank of one data-parallel engine holds
        the same requests (max), the engines hold different ones (sum)."""
        return self._per_engine_sum(lambda w: w.live_requests)

    @property
    def live_configurations(self) -> int:
        return self._per_engine_sum(lambda w: w.live_configurations)

    def _per_engine_sum(self, count: Callable[[WorkerSteeringStats], int]) -> int:
        per_engine: dict[int, int] = {}
        for worker in self.workers:
            per_engine[worker.dp_rank] = max(per_engine.get(worker.dp_rank, 0), count(worker))
        return sum(per_engine.values())
