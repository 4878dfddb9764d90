"""Names both processes agree on, in a module that imports nothing (the API process must not pull
in the worker's module graph, torch included, to learn a string)."""

ENGINE_PLUGIN = "steer_serve"  # vllm.general_plugins entry point (pyproject.toml)
ENDPOINT_PLUGIN = "steer_serve_api"  # vllm.endpoint_plugins entry point (pyproject.toml)
VLLM_PLUGINS = f"{ENGINE_PLUGIN},{ENDPOINT_PLUGIN}"  # what `steer-serve serve` puts in VLLM_PLUGINS

# Worker method called by name through the engine client's `collective_rpc` (a name, not a
# pickled callable: callables would need VLLM_ALLOW_INSECURE_SERIALIZATION).
STATS_METHOD = "steer_serve_stats"
# The capability handshake: the API process asks every worker what its hooks can apply.
CAPABILITIES_METHOD = "steer_serve_capabilities"
# The observation fetch: the API process takes a finished request's probe values and captures.
OBSERVE_METHOD = "steer_serve_observation"
