"""Patches applied in worker processes: wrap four model-runner methods of vLLM 0.32, and add
one method to the worker class for the engine stats route.

`steer_serve_vllm.ledger` lists every vLLM symbol we touch. Each wrapper
calls the original first and adds our bookkeeping after it; none changes vLLM's behaviour for
requests without steering beyond one cheap index copy per step.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from steer_serve.settings import Settings
from steer_serve_vllm.names import STATS_METHOD
from steer_serve_vllm.engine.layer_hooks import find_decoder_layers, install_hooks
from steer_serve_vllm.model_config import model_shape
from steer_serve_vllm.engine.runtime import SteeringRuntime

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only

_RUNTIME_ATTR = "_steer_serve_runtime"


def apply_worker_patches() -> None:
    """Idempotent: vLLM may load general plugins several times in one process."""
    from vllm.v1.worker import gpu_model_runner

    runner_cls = gpu_model_runner.GPUModelRunner
    if getattr(runner_cls, "_steer_serve_patched", False):
        return
    patched = [_wrap(runner_cls, "load_model", _after_load_model)]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # CUDA wheel without the CPU runner
        CPUModelRunner = None
    if CPUModelRunner is not None and "load_model" in vars(CPUModelRunner):
        patched.append(_wrap(CPUModelRunner, "load_model", _after_load_model))
    patched += _refuse_model_runner_v2()
    patched += [_wrap(runner_cls, name, after) for name, after in (
        ("_update_states", _after_update_states),
        ("_on_request_state_removed", _after_request_removed),
        ("_prepare_inputs", _after_prepare_inputs),
    )]
    patched.append(_add_stats_method())
    runner_cls._steer_serve_patched = True
    logger.info("steer-serve: patched %d vLLM worker symbols (%s); see steer_serve_vllm/ledger.py",
                len(patched), ", ".join(patched))


def _refuse_model_runner_v2() -> list[str]:
    from vllm.platforms import current_platform

    if not current_platform.is_cuda_alike():
        return []  # V2 needs Triton GPU kernels; other platforms always run V1 (and importing V2 is slow)
    from vllm.v1.worker.gpu import model_runner as v2

    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "steer-serve supports vLLM's V1 model runner only; set VLLM_USE_V2_MODEL_RUNNER=0 "
            "(steer-serve serve does this) so that steering is never silently ignored"
        )

    v2.GPUModelRunner.load_model = load_model
    return ["v2.GPUModelRunner.load_model"]


def _add_stats_method() -> str:
    from vllm.v1.worker.gpu_worker import Worker

    if STATS_METHOD in vars(Worker):
        raise RuntimeError(f"vLLM's Worker already defines {STATS_METHOD!r}; steer-serve would shadow it")
    setattr(Worker, STATS_METHOD, worker_stats)
    return f"Worker.{STATS_METHOD}"


def worker_stats(worker: Any) -> dict[str, int] | None:
    """This worker's steering stats as a plain dict (it crosses msgpack/ZMQ to the API process);
    None when the runtime is not installed (a worker that never loaded a model)."""
    runtime = runtime_of(getattr(worker, "model_runner", None))
    if runtime is None:
        return None
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank

    # data_parallel_index: the engine's DP rank also for dense models, whose engines vLLM runs as DP=1
    ranks = {"dp_rank": worker.parallel_config.data_parallel_index, "pp_rank": get_pp_group().rank_in_group,
             "tp_rank": get_tensor_model_parallel_rank()}
    return runtime.stats(worker.rank).model_copy(update=ranks).model_dump()


def _wrap(cls: type, name: str, after: Callable[..., None]) -> str:
    original = vars(cls)[name]

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self, *args, **kwargs)
        return result

    wrapper.steer_serve_wrapper = True  # type: ignore[attr-defined]
    setattr(cls, name, wrapper)
    return f"{cls.__name__}.{name}"


def runtime_of(runner: Any) -> SteeringRuntime | None:
    return getattr(runner, _RUNTIME_ATTR, None)


def _after_load_model(runner: Any, *args: Any, **kwargs: Any) -> None:
    if runtime_of(runner) is not None:
        return
    from vllm.config import CompilationMode
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    shape = model_shape(runner.model_config.served_model_name, runner.model_config.hf_text_config)
    runtime = SteeringRuntime(shape, runner.max_num_reqs, runner.max_num_tokens, runner.device,
                              runner.model_config.dtype)
    layers = find_decoder_layers(runner.get_model(), shape.num_layers)
    max_dose = Settings().max_dose  # the API server's environment is inherited by engine processes
    eager = runner.vllm_config.compilation_config.mode == CompilationMode.NONE
    install_hooks(layers, runtime, get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size(),
                  max_dose, skip_unused=eager)
    setattr(runner, _RUNTIME_ATTR, runtime)
    logger.info("steer-serve: hooks on %d decoder layers, %d slots, dose guardrail %s",
                len(layers), runner.max_num_reqs, max_dose or "off")


def _after_update_states(runner: Any, scheduler_output: Any) -> None:
    runtime = runtime_of(runner)
    if runtime is None:
        return
    for new_req in scheduler_output.scheduled_new_reqs:
        params = new_req.sampling_params
        if params is not None and params.extra_args:
            runtime.add_request(new_req.req_id, params.extra_args)


def _after_request_removed(runner: Any, req_id: str, req_state: Any) -> None:
    runtime = runtime_of(runner)
    if runtime is not None:
        runtime.remove_request(req_id)


def _after_prepare_inputs(runner: Any, scheduler_output: Any, num_scheduled_tokens: Any) -> None:
    runtime = runtime_of(runner)
    if runtime is None:
        return
    batch = runner.input_batch
    num_reqs = batch.num_reqs
    runtime.prepare_step(
        batch.req_ids[:num_reqs],
        num_scheduled_tokens[:num_reqs],
        batch.num_computed_tokens_cpu[:num_reqs],
        batch.num_prompt_tokens[:num_reqs],
    )
