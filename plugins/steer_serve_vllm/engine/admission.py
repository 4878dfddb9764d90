"""Scheduler-side admission: a steered request waits until its configuration fits the workers' budget.

Each worker holds `budget.slots` configurations and `budget.vector_capacity` pool vectors
(engine/vector_pool.py). The worker cannot refuse tokens the scheduler already scheduled, so the
scheduler (EngineCore process) must never put more into one step than fits. This is vLLM's own
pattern for LoRA (`max_loras`: a waiting request whose adapter would exceed the limit is skipped
this step and stays queued): we wrap `Scheduler._handle_blocked_waiting_request`, the per-request
"may this waiting request be scheduled now?" check, and answer no when the configurations of the
running requests plus those admitted earlier in this step, plus this one, would exceed the slots
or the pool. Running requests are never held back; unsteered requests are never held back.

Bounded wait: skipping a request that does not fit lets smaller configurations behind it in, and
under steady load they could keep the slots and the pool busy forever, starving a large one. So
once the oldest blocked steered request has waited `MAX_BLOCKED_STEPS` scheduler steps, it is
*reserved*: no steered request that arrived after it is admitted (unless it shares the reserved
configuration) until the reserved one is running. The running configurations then drain as their
requests finish, and the reserved one fits: the pool's floor guarantees that any one valid
configuration fits an empty pool (engine/vector_pool.py). Unsteered requests, running requests and
preempted (formerly running) requests are never held back by a reservation.

Counting all of `running` (not only this step's scheduled part) over-approximates the step's
batch, so the worker's need is always covered; configurations are counted with the same plan the
worker loads with (`plan_vectors`), so the numbers agree exactly.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from steer_serve.request import wire_format
from steer_serve.settings import Settings
from steer_serve_vllm.engine.vector_pool import SteeringBudget, plan_vectors, steering_budget

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only

_NEED_ATTR = "_steer_serve_need"  # planted on vLLM's Request: (fingerprint, vectors) or None
_STEP_ATTR = "_steer_serve_admitted"  # planted on the Scheduler during schedule(): fingerprint -> vectors
_BUDGET_ATTR = "_steer_serve_budget"
_BLOCKED_ATTR = "_steer_serve_blocked"  # planted on the Scheduler: request_id -> (Request, first blocked step)
_STEPS_ATTR = "_steer_serve_steps"  # planted on the Scheduler: schedule() calls so far
# Steps a blocked steered request waits before newer steered requests stop being admitted ahead of
# it. Small against a request's lifetime (each step decodes one token), large enough that a
# briefly blocked request does not serialise admission.
MAX_BLOCKED_STEPS = 32
_NO_STEERING = (None, 0)


def budget_for(vllm_config: Any, settings: Settings) -> SteeringBudget:
    """The budget of every worker of this engine (the scheduler and the workers compute the same)."""
    model = vllm_config.model_config
    text = model.hf_text_config
    return steering_budget(text.num_hidden_layers, text.hidden_size, model.dtype.itemsize,
                           vllm_config.scheduler_config.max_num_seqs, settings.steering_memory,
                           settings.steering_slots, settings.steering_projections)


def need_of(request: Any, num_layers: int, projections: int) -> tuple[str | None, int]:
    """(fingerprint, pool vectors) of a vLLM Request's steering; (None, 0) without steering. Cached on the request."""
    cached = getattr(request, _NEED_ATTR, None)
    if cached is not None:
        return cached
    need = _NO_STEERING
    params = getattr(request, "sampling_params", None)
    payload = ((params.extra_args if params is not None else None) or {}).get(wire_format.EXTRA_ARGS_KEY)
    if payload is not None:
        try:
            fingerprint, steering = wire_format.decode(payload)
            need = (fingerprint, plan_vectors(steering, num_layers, projections).num_vectors)
        except (ValueError, KeyError, TypeError):
            pass  # the worker logs it and runs the request unsteered (runtime.add_request)
    setattr(request, _NEED_ATTR, need)
    return need


def fits(admitted: dict[str, int], need: tuple[str | None, int], budget: SteeringBudget) -> bool:
    """Would the step's configurations still fit with this one? Records it in `admitted` when yes."""
    fingerprint, vectors = need
    if fingerprint is None or fingerprint in admitted:
        return True
    if len(admitted) + 1 > budget.slots or sum(admitted.values()) + vectors > budget.vector_capacity:
        return False
    admitted[fingerprint] = vectors
    return True


def oldest_starving(blocked: dict[str, tuple[Any, int]], live: dict[str, Any], step: int) -> Any | None:
    """Prune `blocked` to requests still waiting; the earliest-arrived one blocked for at least
    MAX_BLOCKED_STEPS steps, or None."""
    from vllm.v1.request import RequestStatus

    for request_id, (request, _) in list(blocked.items()):
        if live.get(request_id) is not request or request.status == RequestStatus.RUNNING:
            del blocked[request_id]  # admitted, finished or aborted
    starving = [request for request, since in blocked.values() if step - since >= MAX_BLOCKED_STEPS]
    return min(starving, key=lambda r: r.arrival_time, default=None)


def held_for(reserved: tuple[Any, str] | None, request: Any, fingerprint: str) -> bool:
    """Must this steered waiting request stay behind the reserved (request, fingerprint)?"""
    if reserved is None or request.num_preemptions:
        return False
    first, first_fingerprint = reserved
    return request is not first and fingerprint != first_fingerprint and request.arrival_time > first.arrival_time


def apply_admission_patches() -> None:
    """Idempotent; effective in the EngineCore process (where the scheduler runs)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    if getattr(Scheduler, "_steer_serve_patched", False):
        return
    schedule = Scheduler.schedule
    handle_blocked = Scheduler._handle_blocked_waiting_request

    @functools.wraps(schedule)
    def schedule_with_admission(self: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget(self)
        layers = self.vllm_config.model_config.hf_text_config.num_hidden_layers
        admitted: dict[str, int] = {}
        for request in self.running:
            fingerprint, vectors = need_of(request, layers, budget.projections)
            if fingerprint is not None:
                admitted[fingerprint] = vectors
        step = getattr(self, _STEPS_ATTR, 0) + 1
        setattr(self, _STEPS_ATTR, step)
        blocked = _blocked(self)
        starving = oldest_starving(blocked, self.requests, step) if blocked else None
        reserved = None if starving is None else (starving, need_of(starving, layers, budget.projections)[0])
        setattr(self, _STEP_ATTR, (admitted, budget, layers, step, reserved))
        try:
            return schedule(self, *args, **kwargs)
        finally:
            setattr(self, _STEP_ATTR, None)

    @functools.wraps(handle_blocked)
    def handle_blocked_with_admission(self: Any, request: Any) -> bool:
        if not handle_blocked(self, request):
            return False
        step = getattr(self, _STEP_ATTR, None)
        if step is None:
            return True
        admitted, budget, layers, step_number, reserved = step
        need = need_of(request, layers, budget.projections)
        if need[0] is None:
            return True
        if not held_for(reserved, request, need[0]) and fits(admitted, need, budget):
            return True
        _blocked(self).setdefault(request.request_id, (request, step_number))
        return False

    schedule_with_admission.steer_serve_wrapper = True  # type: ignore[attr-defined]
    handle_blocked_with_admission.steer_serve_wrapper = True  # type: ignore[attr-defined]
    Scheduler.schedule = schedule_with_admission
    Scheduler._handle_blocked_waiting_request = handle_blocked_with_admission
    Scheduler._steer_serve_patched = True


def _blocked(scheduler: Any) -> dict[str, tuple[Any, int]]:
    blocked = getattr(scheduler, _BLOCKED_ATTR, None)
    if blocked is None:
        blocked = {}
        setattr(scheduler, _BLOCKED_ATTR, blocked)
    return blocked


def _budget(scheduler: Any) -> SteeringBudget:
    budget = getattr(scheduler, _BUDGET_ATTR, None)
    if budget is None:
        budget = budget_for(scheduler.vllm_config, Settings())
        setattr(scheduler, _BUDGET_ATTR, budget)
        logger.info("steer-serve: steering admission: %d slots, %d pool vectors per worker",
                    budget.slots, budget.vector_capacity)
    return budget
