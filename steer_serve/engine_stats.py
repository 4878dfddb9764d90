"""What each engine worker reports about its steering state (`GET /v1/steering/engine`).

Kept in the domain package so that tools (the soak test, dashboards) can read the route's
answer without importing vLLM. Leaks show up here first: a request that left the engine without
its slot being released stays counted in `live_requests` / `live_configurations` forever.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, NonNegativeInt


class WorkerSteeringStats(BaseModel):
    """One worker (one tensor-parallel rank): its steering runtime's bookkeeping."""

    model_config = ConfigDict(extra="forbid")

    rank: NonNegativeInt
    live_requests: NonNegativeInt  # steered requests the worker holds state for
    live_configurations: NonNegativeInt  # distinct steering fingerprints among them
    resident_slots: NonNegativeInt  # table slots holding a configuration (an LRU cache over live ones)
    slot_capacity: NonNegativeInt  # slots in the tables (max_num_seqs)
    table_bytes: NonNegativeInt  # memory of the persistent steering tables on the worker's device


class EngineSteeringStats(BaseModel):
    """Every worker's stats, in rank order."""

    model_config = ConfigDict(extra="forbid")

    object: str = "steering.engine"
    workers: list[WorkerSteeringStats]

    @property
    def live_requests(self) -> int:
        return max((w.live_requests for w in self.workers), default=0)

    @property
    def live_configurations(self) -> int:
        return max((w.live_configurations for w in self.workers), default=0)
