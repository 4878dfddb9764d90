"""vLLM plugin entry points for steer-serve. The only package that touches vLLM internals.

vLLM calls these in many processes, possibly more than once: they import lazily and are
idempotent. All work lives in `api/` (API-server process) and `engine/` (worker processes);
`ledger.py` lists every vLLM symbol we touch.
"""


def register_engine_plugin() -> None:
    """`vllm.general_plugins`: patch the model runner (effective in worker processes) and make a
    failed endpoint plugin fatal (effective in the API process)."""
    from steer_serve_vllm.api.endpoint_guard import guard_endpoint_plugin_loading
    from steer_serve_vllm.engine.worker_patches import apply_worker_patches

    guard_endpoint_plugin_loading()
    apply_worker_patches()


def make_endpoint_plugin():  # noqa: ANN201 - returns vLLM's EndpointPlugin protocol object
    """`vllm.endpoint_plugins`: steering routes and request gateway in the API server."""
    from steer_serve_vllm.api.plugin import SteerServeEndpointPlugin

    return SteerServeEndpointPlugin()
