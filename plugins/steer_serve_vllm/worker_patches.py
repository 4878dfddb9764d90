"""Patches applied in worker processes: wrap four model-runner methods of vLLM 0.32, and add
one method to the worker class for the engine stats route.

The ledger below is the single list of vLLM symbols we touch on the engine side. Each wrapper
calls the original first and adds our bookkeeping after it; none changes vLLM's behaviour for
requests without steering beyond one cheap index copy per step.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

from steer_serve.settings import Settings
from steer_serve_vllm.layer_hooks import find_decoder_layers, install_hooks
from steer_serve_vllm.model_config import model_shape
from steer_serve_vllm.steering_runtime import SteeringRuntime

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only

_RUNTIME_ATTR = "_steer_serve_runtime"
# Worker method called by name through the engine client's `collective_rpc` (a name, not a
# pickled callable: callables would need VLLM_ALLOW_INSECURE_SERIALIZATION).
STATS_METHOD = "steer_serve_stats"


@dataclass(frozen=True)
class PatchRecord:
    symbol: str
    why: str
    drop_when: str


LEDGER = (
    PatchRecord(
        "vllm.plugins.load_endpoint_plugins (API process; endpoint_guard.py)",
        "raise when our endpoint plugin fails to load, instead of vLLM's log-and-continue, which "
        "would serve every steered request unsteered",
        "vLLM makes endpoint plugin failures fatal or configurable",
    ),
    PatchRecord(
        "engine_client.shutdown (API process; the AsyncLLM instance only; engine_death.py)",
        "mark a deliberate stop, so that an EngineCore process ending without it is an engine death "
        "and the server exits non-zero (vLLM 0.32 exits 0) for supervisors to restart it",
        "vLLM exits non-zero after an engine death",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner.load_model",
        "allocate steering tables and install decoder-layer hooks after weights load and before "
        "the warm-up/compile run traces the model (later hooks are ignored under torch.compile)",
        "vLLM offers a post-load model hook for plugins",
    ),
    PatchRecord(
        "vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model",
        "same as GPUModelRunner.load_model: the CPU runner overrides it without calling super()",
        "as above",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu.model_runner.GPUModelRunner.load_model (Model Runner V2, GPU only)",
        "refuse to start: steering is implemented for the V1 runner, and an engine on V2 would "
        "silently ignore every steering payload. `steer-serve serve` sets VLLM_USE_V2_MODEL_RUNNER=0",
        "steering is ported to Model Runner V2",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner._update_states",
        "register new requests' steering payload (SamplingParams.extra_args) when they first arrive",
        "vLLM exposes per-request hooks to plugins",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner._on_request_state_removed",
        "release a finished request's steering slot (vLLM's own hook point for request-scoped caches)",
        "never: this is the intended extension point; we only chain onto it",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs",
        "build the token->table-row index in the forward's final token order each step",
        "vLLM exposes per-step token metadata to plugins (as it does for LoRA's token mapping)",
    ),
    PatchRecord(
        f"vllm.v1.worker.gpu_worker.Worker.{STATS_METHOD} (added; CPUWorker inherits it)",
        "answer `collective_rpc(\"steer_serve_stats\")` from the API process with this worker's steering "
        "bookkeeping (GET /v1/steering/engine); collective_rpc looks worker methods up by name",
        "vLLM's --worker-extension-cls is set by every launcher we support (it adds methods without a patch)",
    ),
)


def apply_worker_patches() -> None:
    """Idempotent: vLLM may load general plugins several times in one process."""
    from vllm.v1.worker import gpu_model_runner

    runner_cls = gpu_model_runner.GPUModelRunner
    if getattr(runner_cls, "_steer_serve_patched", False):
        return
    _wrap(runner_cls, "load_model", _after_load_model)
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # CUDA wheel without the CPU runner
        CPUModelRunner = None
    if CPUModelRunner is not None and "load_model" in vars(CPUModelRunner):
        _wrap(CPUModelRunner, "load_model", _after_load_model)
    _refuse_model_runner_v2()
    _wrap(runner_cls, "_update_states", _after_update_states)
    _wrap(runner_cls, "_on_request_state_removed", _after_request_removed)
    _wrap(runner_cls, "_prepare_inputs", _after_prepare_inputs)
    _add_stats_method()
    runner_cls._steer_serve_patched = True
    logger.info("steer-serve: patched %d vLLM model-runner symbols", len(LEDGER))


def _refuse_model_runner_v2() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cuda_alike():
        return  # V2 needs Triton GPU kernels; other platforms always run V1 (and importing V2 is slow)
    from vllm.v1.worker.gpu import model_runner as v2

    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "steer-serve supports vLLM's V1 model runner only; set VLLM_USE_V2_MODEL_RUNNER=0 "
            "(steer-serve serve does this) so that steering is never silently ignored"
        )

    v2.GPUModelRunner.load_model = load_model


def _add_stats_method() -> None:
    from vllm.v1.worker.gpu_worker import Worker

    if STATS_METHOD in vars(Worker):
        raise RuntimeError(f"vLLM's Worker already defines {STATS_METHOD!r}; steer-serve would shadow it")
    setattr(Worker, STATS_METHOD, worker_stats)


def worker_stats(worker: Any) -> dict[str, int] | None:
    """This worker's steering stats as a plain dict (it crosses msgpack/ZMQ to the API process);
    None when the runtime is not installed (a worker that never loaded a model)."""
    runtime = runtime_of(getattr(worker, "model_runner", None))
    return None if runtime is None else runtime.stats(worker.rank).model_dump()


def _wrap(cls: type, name: str, after: Callable[..., None]) -> None:
    original = vars(cls)[name]

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self, *args, **kwargs)
        return result

    wrapper.steer_serve_wrapper = True  # type: ignore[attr-defined]
    setattr(cls, name, wrapper)


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
