"""Fetch finished requests' observations from the workers, many at once.

Each fetch is a `collective_rpc` of names.OBSERVE_METHOD through the engine core, which runs it
between engine steps, and a finished request's observation is ready only after the engine's next
step (vLLM removes finished requests from the model runner then). One RPC per waiting request
and poll would put many round trips between steps when many requests finish together; so every
request waiting for its observation joins one poll loop that asks for all of them in one RPC
(every `POLL_S` while any waits). Each worker answers (tensor-parallel rank 0 of every pipeline
stage, with the layers it owns) with the results it held and drops them; a request still running
answers {"status": "live"} and is asked again; parts already handed over by one stage are kept
until every stage is done (api/observe_merge.py merges them).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from steer_serve_vllm.api.observe_merge import merge_stages
from steer_serve_vllm.names import OBSERVE_METHOD

RPC_TIMEOUT_S = 10.0
WAIT_S = 60.0  # how long the engine may take to release a finished or aborted request
POLL_S = 0.02
Result = dict[str, Any]


@dataclass
class _Waiting:
    future: asyncio.Future
    deadline: float
    finished: dict[int, Result] = field(default_factory=dict)  # pp_rank -> that stage's part


class ObservationFetcher:
    def __init__(self, engine_client: Any) -> None:
        self._engine_client = engine_client
        self._waiting: dict[str, _Waiting] = {}
        self._loop_task: asyncio.Task | None = None

    async def fetch(self, observation_id: str) -> Result | None:
        """The merged result; None when no worker knows the id (the request never reached one)."""
        waiting = _Waiting(asyncio.get_running_loop().create_future(), time.monotonic() + WAIT_S)
        self._waiting[observation_id] = waiting
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._poll())
        return await waiting.future

    async def _poll(self) -> None:
        while self._waiting:
            ids = list(self._waiting)
            try:
                per_engine = await self._engine_client.engine_core.call_utility_all_async(
                    "collective_rpc", OBSERVE_METHOD, RPC_TIMEOUT_S, (ids,), None)
            except Exception as exc:  # each response still goes out, with the error in `observe`
                for observation_id in ids:
                    _settle(self._waiting.pop(observation_id), exception=exc)
                continue
            answers = [a for answers in per_engine for a in answers if a is not None]
            for observation_id in ids:
                self._update(observation_id, answers)
            if self._waiting:
                await asyncio.sleep(POLL_S)

    def _update(self, observation_id: str, answers: list[Result]) -> None:
        waiting = self._waiting[observation_id]
        parts = [a["results"][observation_id] | {"pp_rank": a["pp_rank"], "owned_layers": a["owned_layers"]}
                 for a in answers if observation_id in a["results"]]
        waiting.finished |= {p["pp_rank"]: p for p in parts if p.get("status") == "done"}
        if not any(p.get("status") == "live" for p in parts):
            del self._waiting[observation_id]
            _settle(waiting, result=merge_stages(list(waiting.finished.values())) if waiting.finished else None)
        elif time.monotonic() > waiting.deadline:
            del self._waiting[observation_id]
            _settle(waiting, exception=TimeoutError(f"observation {observation_id} still running after {WAIT_S:.0f} s"))


def _settle(waiting: _Waiting, result: Result | None = None, exception: BaseException | None = None) -> None:
    if waiting.future.done():  # the waiting response was cancelled
        return
    if exception is not None:
        waiting.future.set_exception(exception)
    else:
        waiting.future.set_result(result)


def fetcher_of(app_state: Any, engine_client: Any) -> ObservationFetcher:
    """The API process's one fetcher (kept on the app's state)."""
    fetcher = getattr(app_state, "steer_serve_observation_fetcher", None)
    if fetcher is None:
        fetcher = app_state.steer_serve_observation_fetcher = ObservationFetcher(engine_client)
    return fetcher
