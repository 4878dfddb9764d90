"""vLLM plugin entry points for steer-serve. The only package that touches vLLM internals.

vLLM calls these in many processes, possibly more than once: they import lazily and are
idempotent. All work lives in `api/` (API-server process) and `engine/` (worker processes);
`ledger.py` lists every vLLM symbol we touch.
"""


def register_engine_plugin() -> None:
    """`vllm.general_plugins`: patch the model runner (effective in worker processes) and the
    scheduler's admission (EngineCore: steered requests wait for room in the tables), put our
    settings into the compile-cache key, pin the V1 runner on CUDA, and make sure the endpoint
    plugin serves `steering` (effective in the API process, where this runs before vLLM parses
    its arguments)."""
    import os

    from vllm.platforms import current_platform

    from steer_serve_vllm.api.endpoint_guard import guard_endpoint_plugin_loading
    from steer_serve_vllm.engine.admission import apply_admission_patches
    from steer_serve_vllm.engine.compile_cache_key import salt_compile_cache_key
    from steer_serve_vllm.engine.model_runner_choice import pin_v1_model_runner
    from steer_serve_vllm.engine.worker_patches import apply_worker_patches
    from steer_serve_vllm.registration import mark_engine_plugin_registered

    pin_v1_model_runner(os.environ, current_platform.is_cuda_alike())
    guard_endpoint_plugin_loading()
    salt_compile_cache_key()
    apply_worker_patches()
    apply_admission_patches()
    mark_engine_plugin_registered()


def make_endpoint_plugin():  # noqa: ANN201 - returns vLLM's EndpointPlugin protocol object
    """`vllm.endpoint_plugins`: steering routes and request gateway in the API server."""
    from steer_serve_vllm.api.plugin import SteerServeEndpointPlugin

    return SteerServeEndpointPlugin()
