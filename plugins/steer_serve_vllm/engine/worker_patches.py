"""Patches applied in worker processes: wrap five model-runner methods of vLLM 0.32, and add
three methods to the worker class (the engine stats route, the capability handshake, observations).

`steer_serve_vllm.ledger` lists every vLLM symbol we touch. Each wrapper
calls the original first and adds our bookkeeping after it; none changes vLLM's behaviour for
requests without steering beyond one cheap index copy per step. `execute_model` is wrapped around,
not after: on CPU it runs inside `frame_headroom.call_with_headroom` (why: that module).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from steer_serve.model_shape import ModelShape
from steer_serve.request import observe_wire
from steer_serve.settings import Settings
from steer_serve_vllm.engine import opaque_sites
from steer_serve_vllm.engine.adapters import adapter_for
from steer_serve_vllm.engine.admission import budget_for
from steer_serve_vllm.engine.frame_headroom import call_with_headroom
from steer_serve_vllm.engine.layer_hooks import install_hooks, opaque_sites_work
from steer_serve_vllm.engine.observe_hooks import install_observer_hooks
from steer_serve_vllm.engine.observe_budget import observe_budget
from steer_serve_vllm.engine.observer import Observer
from steer_serve_vllm.engine.runtime import SteeringRuntime
from steer_serve_vllm.engine.sites import ModelSites, SiteSwitches, capabilities, owned_layers, place_sites
from steer_serve_vllm.engine.topk_encoders import TopKEncoders
from steer_serve_vllm.names import CAPABILITIES_METHOD, OBSERVE_METHOD, STATS_METHOD

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only

_RUNTIME_ATTR = "_steer_serve_runtime"
_SITES_ATTR = "_steer_serve_sites"
_OBSERVER_ATTR = "_steer_serve_observer"
_IDLE_SKIP_ATTR = "_steer_serve_idle_skip"  # the opaque ops may skip a whole idle step (compiled CPU)


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
    patched.append(_run_with_headroom(runner_cls))
    patched.append(_add_worker_method(STATS_METHOD, worker_stats))
    patched.append(_add_worker_method(CAPABILITIES_METHOD, worker_capabilities))
    patched.append(_add_worker_method(OBSERVE_METHOD, worker_observation))
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


def _add_worker_method(name: str, method: Callable[..., Any]) -> str:
    from vllm.v1.worker.gpu_worker import Worker

    if name in vars(Worker):
        raise RuntimeError(f"vLLM's Worker already defines {name!r}; steer-serve would shadow it")
    setattr(Worker, name, method)
    return f"Worker.{name}"


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
    observer = observer_of(worker.model_runner)
    observed = {} if observer is None else observer.stats()
    return runtime.stats(worker.rank).model_copy(update=ranks | observed).model_dump()


def worker_observation(worker: Any, observation_ids: list[str]) -> dict[str, Any] | None:
    """Take finished requests' observations (every rank drops its copies; {"status": "live"} for a
    request still running). Tensor-parallel rank 0 of every pipeline stage answers, with its pp_rank
    and the layers it owns (its hooks saw only those; api/observe_merge.py merges the stages); the
    other ranks return None."""
    runner = getattr(worker, "model_runner", None)
    observer = observer_of(runner)
    if observer is None:
        return None
    taken = {oid: observer.take(oid) for oid in observation_ids}
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank

    if get_tensor_model_parallel_rank() != 0:
        return None
    return {"pp_rank": get_pp_group().rank_in_group, "owned_layers": owned_layers(getattr(runner, _SITES_ATTR)),
            "results": {oid: result for oid, result in taken.items() if result is not None}}


def worker_capabilities(worker: Any) -> dict[str, Any] | None:
    """What this worker's hooks can apply, per decoder layer (a plain dict for msgpack/ZMQ);
    None when no model was loaded here."""
    runner = getattr(worker, "model_runner", None)
    model_sites: ModelSites | None = getattr(runner, _SITES_ATTR, None)
    if model_sites is None:
        return None
    hidden = runner.model_config.hf_text_config.hidden_size
    runtime = runtime_of(runner)
    return capabilities(model_sites, worker.rank, hidden, runtime.tables.num_projections,
                        runtime.topk_encoders.report()).model_dump()


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


def _run_with_headroom(cls: type) -> str:
    """Wrap `execute_model`: a CPU runner (the only device measured) runs each step inside
    call_with_headroom, where the compiled graph's op calls do not map a stack chunk each."""
    original = vars(cls)["execute_model"]

    @functools.wraps(original)
    def execute_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.device.type == "cpu":
            return call_with_headroom(original, self, *args, **kwargs)
        return original(self, *args, **kwargs)

    execute_model.steer_serve_wrapper = True  # type: ignore[attr-defined]
    cls.execute_model = execute_model
    return f"{cls.__name__}.execute_model"


def runtime_of(runner: Any) -> SteeringRuntime | None:
    return getattr(runner, _RUNTIME_ATTR, None)


def observer_of(runner: Any) -> Observer | None:
    return getattr(runner, _OBSERVER_ATTR, None)


def _after_load_model(runner: Any, *args: Any, **kwargs: Any) -> None:
    if runtime_of(runner) is not None:
        return
    from vllm.config import CompilationMode
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    config = runner.model_config.hf_text_config
    adapter = adapter_for(getattr(runner.model_config.hf_config, "architectures", None))
    settings = Settings()  # the API server's environment is inherited by engine processes
    model_sites = place_sites(adapter, runner.get_model(), config.num_hidden_layers, config.num_attention_heads,
                              get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size(),
                              SiteSwitches(heads=settings.head_sites, experts=settings.expert_sites))
    budget = budget_for(runner.vllm_config, settings)
    runtime = SteeringRuntime(_table_shape(config, model_sites), runner.max_num_reqs, runner.max_num_tokens,
                              runner.device, runner.model_config.dtype, budget)
    runtime.topk_encoders = TopKEncoders.load(settings.topk_clamp_saes, settings.sae_dir, config.hidden_size,
                                              config.num_hidden_layers, runner.device, runner.model_config.dtype)
    max_dose = settings.max_dose
    eager = runner.vllm_config.compilation_config.mode == CompilationMode.NONE
    opaque = not eager and opaque_sites_work(model_sites)  # else compiled: hooks traced into the graph
    # per-step branching (skip unused edits): eager, and in opaque ops unless CUDA graphs replay a capture
    branch = eager or (opaque and runner.device.type == "cpu")
    install_hooks(model_sites, runtime, max_dose, skip_unused=branch, opaque=opaque)
    observer = Observer(config.num_hidden_layers, config.hidden_size, runner.max_num_reqs, runner.max_num_tokens,
                        runner.max_model_len, runner.device,
                        observe_budget(config.hidden_size, runner.max_model_len, settings.observe_memory))
    install_observer_hooks(model_sites, observer, skip_idle=branch, opaque=opaque)  # sees the steering edits
    setattr(runner, _OBSERVER_ATTR, observer)
    setattr(runner, _RUNTIME_ATTR, runtime)
    setattr(runner, _SITES_ATTR, model_sites)
    setattr(runner, _IDLE_SKIP_ATTR, opaque and branch)
    logger.info("steer-serve: %s adapter, hooks on %d decoder layers (%d with expert edits), %d slots, "
                "%d pool vectors, %d projections per layer, tables %.1f MiB, TopK encoders %s (%.1f MiB), "
                "dose guardrail %s", adapter.name, len(model_sites.layers),
                sum(s.router is not None for s in model_sites.sites), budget.slots, budget.vector_capacity,
                budget.projections, runtime.tables.nbytes / 2**20, sorted(runtime.topk_encoders.report()) or "none",
                runtime.topk_encoders.nbytes / 2**20, max_dose or "off")


def _table_shape(config: Any, model_sites: ModelSites) -> ModelShape:
    """The sizes the persistent tables need: the config's, with experts where a router was placed."""
    experts = {i: s.router.experts for i, s in enumerate(model_sites.sites) if s.router is not None}
    return ModelShape(model_id="", hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                      num_heads=config.num_attention_heads, experts_per_layer=experts)


def _after_update_states(runner: Any, scheduler_output: Any) -> None:
    runtime = runtime_of(runner)
    if runtime is None:
        return
    for new_req in scheduler_output.scheduled_new_reqs:
        params = new_req.sampling_params
        if params is not None and params.extra_args:
            runtime.add_request(new_req.req_id, params.extra_args)
            payload = params.extra_args.get(observe_wire.EXTRA_ARGS_KEY)
            if payload is not None:
                observer_of(runner).add_request(new_req.req_id, payload, len(new_req.prompt_token_ids or ()),
                                                params.max_tokens)


def _after_request_removed(runner: Any, req_id: str, req_state: Any) -> None:
    runtime = runtime_of(runner)
    if runtime is not None:
        runtime.remove_request(req_id)
        observer_of(runner).remove_request(req_id)


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
    observer = observer_of(runner)
    observer.prepare_step(batch.req_ids[:num_reqs], num_scheduled_tokens[:num_reqs],
                          batch.num_computed_tokens_cpu[:num_reqs])
    if getattr(runner, _IDLE_SKIP_ATTR, False):
        opaque_sites.set_step_idle(not runtime.kinds_in_step and not observer.layers_in_step)
