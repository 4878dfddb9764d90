"""Admin route `GET /v1/steering/engine`: every worker's steering bookkeeping, for operators and
the soak test (a leaked slot shows up as live requests that never return to 0).

The API process asks the workers through vLLM's engine client `collective_rpc` with the name of
the method that `engine/worker_patches.py` adds to the worker class; the answer is validated into the
domain model `steer_serve.engine_stats`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from steer_serve.engine_stats import EngineSteeringStats, WorkerSteeringStats
from steer_serve_vllm.api.admin_auth import admin_refusal
from steer_serve_vllm.api.errors import error_response
from steer_serve_vllm.names import STATS_METHOD

router = APIRouter(tags=["steering engine"])
RPC_TIMEOUT_S = 10.0  # a utility call waits for the current engine step; a stuck engine must not hang the route


async def engine_stats(engine_client: Any) -> EngineSteeringStats:
    """Ask every worker of every engine for its steering stats (one entry per rank; workers without a
    runtime are skipped). `engine_client.collective_rpc` answers from the first data-parallel engine
    only (`DPLBAsyncMPClient.call_utility_async`), so the call goes to each engine core the client manages."""
    per_engine = await engine_client.engine_core.call_utility_all_async(
        "collective_rpc", STATS_METHOD, RPC_TIMEOUT_S, (), None)
    workers = [WorkerSteeringStats.model_validate(a) for answers in per_engine for a in answers if a is not None]
    return EngineSteeringStats(workers=sorted(workers, key=lambda w: (w.dp_rank, w.rank)))


@router.get("/v1/steering/engine")
async def get_engine_stats(request: Request) -> Any:
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    engine_client = getattr(request.app.state, "engine_client", None)
    if engine_client is None or engine_client.errored:
        return error_response(503, "the engine is not running", "ServiceUnavailableError")
    return (await engine_stats(engine_client)).model_dump(mode="json")
