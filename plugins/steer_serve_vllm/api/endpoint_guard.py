"""Make sure our endpoint plugin serves `steering` wherever our engine plugin runs.

vLLM loads every installed general plugin (our engine half) in every process, but an endpoint
plugin (our API half) only when it is named in `VLLM_PLUGINS`, and it logs and skips one that
fails to instantiate. Either way the engine would be hooked while vLLM's request models drop
every `steering` field: requests would run unsteered, silently. This wraps
`vllm.plugins.load_endpoint_plugins` (API process) so that:

- allow-listed and failed to load -> raise (refuse to start);
- not allow-listed (`VLLM_PLUGINS` unset, as with a plain `vllm serve`, or naming only the
  general plugin) -> add our endpoint plugin ourselves, with the same task gate vLLM applies.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from steer_serve_vllm.names import ENDPOINT_PLUGIN

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only


def guard_endpoint_plugin_loading() -> None:
    """Idempotent; effective in the API server process, harmless elsewhere."""
    import vllm.plugins as plugins

    original = plugins.load_endpoint_plugins
    if getattr(original, "steer_serve_wrapper", False):
        return

    @functools.wraps(original)
    def load_endpoint_plugins(supported_tasks: Any = None, *args: Any, **kwargs: Any) -> Any:
        loaded = original(supported_tasks, *args, **kwargs)
        if any(getattr(p, "name", None) == ENDPOINT_PLUGIN for p in loaded):
            return loaded
        if allow_listed(os.environ.get("VLLM_PLUGINS")):
            raise RuntimeError(
                f"endpoint plugin {ENDPOINT_PLUGIN} failed to load (see the error above); "
                "refusing to start, because steering fields would be silently ignored"
            )
        plugin = _own_endpoint_plugin(supported_tasks)
        return loaded if plugin is None else [*loaded, plugin]

    load_endpoint_plugins.steer_serve_wrapper = True  # type: ignore[attr-defined]
    plugins.load_endpoint_plugins = load_endpoint_plugins


def allow_listed(vllm_plugins: str | None) -> bool:
    """Whether vLLM itself loads our endpoint plugin for this `VLLM_PLUGINS` value."""
    return vllm_plugins is not None and ENDPOINT_PLUGIN in [n.strip() for n in vllm_plugins.split(",")]


def _own_endpoint_plugin(supported_tasks: Any) -> Any:
    """Our endpoint plugin, gated on its required tasks as vLLM gates allow-listed ones."""
    from steer_serve_vllm.api.plugin import SteerServeEndpointPlugin

    plugin = SteerServeEndpointPlugin()
    if not set(plugin.required_tasks) & set(supported_tasks or ()):
        logger.info("steer-serve: no steering routes: the server supports %s, not generation", supported_tasks)
        return None
    logger.info("steer-serve: loaded endpoint plugin %s with the engine plugin (VLLM_PLUGINS=%r does not "
                "name it; steering must never be silently ignored)", ENDPOINT_PLUGIN,
                os.environ.get("VLLM_PLUGINS"))
    return plugin
