"""The API side of the capability handshake: ask every worker what its hooks can apply, once,
before the first request, and merge the ranks' answers into the shape the resolver checks
requests, presets and experiment arms against."""

from __future__ import annotations

from typing import Any

from steer_serve.engine_capabilities import WorkerCapabilities, merge
from steer_serve.model_shape import ModelShape
from steer_serve_vllm.names import CAPABILITIES_METHOD
RPC_TIMEOUT_S = 60.0


async def engine_shape(engine_client: Any, model_id: str) -> ModelShape:
    answers = await engine_client.collective_rpc(CAPABILITIES_METHOD, timeout=RPC_TIMEOUT_S)
    workers = [WorkerCapabilities.model_validate(answer) for answer in answers if answer is not None]
    return merge(model_id, sorted(workers, key=lambda w: w.rank))
