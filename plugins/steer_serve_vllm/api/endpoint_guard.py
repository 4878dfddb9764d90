"""Make a failure to load our endpoint plugin fatal instead of silently serving unsteered.

vLLM logs and skips an endpoint plugin that fails to instantiate. For us that would mean every
`steering` field is dropped by vLLM's request models and requests run unsteered, which must
never happen. This wraps `vllm.plugins.load_endpoint_plugins` (API process) to raise instead.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from steer_serve_vllm.names import ENDPOINT_PLUGIN



def guard_endpoint_plugin_loading() -> None:
    """Idempotent; effective in the API server process, harmless elsewhere."""
    import vllm.plugins as plugins

    original = plugins.load_endpoint_plugins
    if getattr(original, "steer_serve_wrapper", False):
        return

    @functools.wraps(original)
    def load_endpoint_plugins(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        wanted = ENDPOINT_PLUGIN in (os.environ.get("VLLM_PLUGINS") or "").split(",")
        if wanted and not any(getattr(p, "name", None) == ENDPOINT_PLUGIN for p in loaded):
            raise RuntimeError(
                f"endpoint plugin {ENDPOINT_PLUGIN} failed to load (see the error above); "
                "refusing to start, because steering fields would be silently ignored"
            )
        return loaded

    load_endpoint_plugins.steer_serve_wrapper = True  # type: ignore[attr-defined]
    plugins.load_endpoint_plugins = load_endpoint_plugins
