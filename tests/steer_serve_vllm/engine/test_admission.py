"""Scheduler admission: a steered request is held back while its configuration would not fit the
workers' slots or vector pool; read off vLLM's real Request objects carrying real wire payloads.
The bounded-wait rule is checked on vLLM's real Scheduler (no engine, no worker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from steer_serve.request import wire_format
from steer_serve.request.resolved_steering import LayerAddition, ResolvedSteering
from steer_serve_vllm.engine import admission
from steer_serve_vllm.engine.admission import MAX_BLOCKED_STEPS, apply_admission_patches, fits, need_of
from steer_serve_vllm.engine.vector_pool import SteeringBudget


def _request(request_id: str, steering: ResolvedSteering | None, arrival_time: float | None = None) -> Request:
    extra = None if steering is None else {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)}
    return Request(request_id, [1, 2, 3], SamplingParams(max_tokens=4, extra_args=extra), None,
                   arrival_time=arrival_time)


def _adds(*layers: int, value: float = 1.0) -> ResolvedSteering:
    return ResolvedSteering(additions=tuple(LayerAddition(layer, "all", np.full(8, value, np.float32))
                                            for layer in layers))


def test_need_is_the_fingerprint_and_the_planned_vectors() -> None:
    steering = _adds(0, 1, 5)  # layer 5 is outside a 4-layer model: no row
    assert need_of(_request("a", steering), num_layers=4, projections=2) == (steering.fingerprint, 2)
    assert need_of(_request("b", None), num_layers=4, projections=2) == (None, 0)
    broken = Request("c", [1], SamplingParams(max_tokens=1, extra_args={wire_format.EXTRA_ARGS_KEY: "{x"}), None)
    assert need_of(broken, num_layers=4, projections=2) == (None, 0)  # the worker runs it unsteered and logs why


def test_a_configuration_waits_for_a_free_slot() -> None:
    budget = SteeringBudget(slots=2, pool_rows=100)
    admitted: dict[str, int] = {}
    assert fits(admitted, ("a", 1), budget) and fits(admitted, ("b", 1), budget)
    assert not fits(admitted, ("c", 1), budget)
    assert fits(admitted, ("a", 1), budget) and fits(admitted, (None, 0), budget)  # sharing and unsteered: free
    assert admitted == {"a": 1, "b": 1}


def test_a_configuration_waits_for_room_in_the_pool() -> None:
    budget = SteeringBudget(slots=8, pool_rows=6)  # 5 vectors
    admitted: dict[str, int] = {"running": 3}
    assert not fits(admitted, ("big", 3), budget)
    assert fits(admitted, ("small", 2), budget) and admitted == {"running": 3, "small": 2}


# vLLM's real Scheduler with the admission patches: the bounded-wait rule against starvation.

@pytest.fixture(scope="module")
def engine_config(tiny_llama_dir: Path) -> VllmConfig:
    config = EngineArgs(model=str(tiny_llama_dir), max_num_seqs=8, max_model_len=128, dtype="float32",
                        enforce_eager=True, seed=0).create_engine_config()
    config.cache_config.num_gpu_blocks = 256  # what the workers would report; the scheduler only counts
    return config


@pytest.fixture()
def scheduler(engine_config: VllmConfig, monkeypatch: pytest.MonkeyPatch) -> Scheduler:
    monkeypatch.setenv("STEER_SERVE_STEERING_SLOTS", "2")  # two configurations per step
    apply_admission_patches()
    block = engine_config.cache_config.block_size
    spec = FullAttentionSpec(block_size=block, num_kv_heads=2, head_size=64, dtype=torch.float32)
    kv_cache = KVCacheConfig(num_blocks=256, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)])
    return Scheduler(engine_config, kv_cache, StructuredOutputManager(engine_config), block_size=block)


class Traffic:
    """Two popular configurations (A, C) with steady traffic: two requests each always running; every
    step the oldest finishes and a newer one of the same configuration arrives."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler, self.arrivals = scheduler, 0
        self.configs = {"A": _adds(0), "C": _adds(1)}

    def add(self, config: str | None, steering: ResolvedSteering | None = None) -> Request:
        self.arrivals += 1
        steering = steering if config is None else self.configs[config]
        request = _request(f"{config}-{self.arrivals}", steering, arrival_time=float(self.arrivals))
        self.scheduler.add_request(request)
        return request

    def running(self) -> set[str]:
        return {request.request_id for request in self.scheduler.running}

    def step(self) -> None:
        """Finish the oldest running A or C request, a newer one of its configuration arrives, schedule."""
        popular = [r for r in self.scheduler.running if r.request_id[0] in self.configs]
        oldest = min(popular, key=lambda r: r.arrival_time)
        self.scheduler.finish_requests([oldest.request_id], RequestStatus.FINISHED_ABORTED)
        self.add(oldest.request_id[0])
        self.scheduler.schedule()


def _steps_until_admitted(scheduler: Scheduler, limit: int) -> tuple[int | None, Traffic, Request]:
    traffic = Traffic(scheduler)
    for config in "AACC":
        traffic.add(config)
    scheduler.schedule()
    big = traffic.add(None, _adds(0, 1, 2, 3, value=2.0))  # a third configuration: needs a slot of its own
    scheduler.schedule()
    for step in range(1, limit + 1):
        if big.request_id in traffic.running():
            return step, traffic, big
        traffic.step()
    return None, traffic, big


def test_a_blocked_configuration_is_admitted_within_the_bounded_wait(scheduler: Scheduler) -> None:
    admitted_after, traffic, big = _steps_until_admitted(scheduler, limit=MAX_BLOCKED_STEPS + 10)
    assert admitted_after is not None and MAX_BLOCKED_STEPS <= admitted_after <= MAX_BLOCKED_STEPS + 4
    unsteered = traffic.add(None)  # never held back, not even while newer steered requests are
    scheduler.schedule()
    assert unsteered.request_id in traffic.running()
    for _ in range(4):  # the held-back popular requests run again beside the big one
        traffic.step()
    assert big.request_id in traffic.running() and len({r[0] for r in traffic.running()} & {"A", "C"}) == 1


def test_without_the_bounded_wait_smaller_configurations_starve_a_blocked_one(
        scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "MAX_BLOCKED_STEPS", 10**9)  # what the rule prevents
    admitted_after, _, _ = _steps_until_admitted(scheduler, limit=3 * MAX_BLOCKED_STEPS)
    assert admitted_after is None
