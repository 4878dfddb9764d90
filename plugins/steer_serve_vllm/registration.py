"""Whether vLLM ran our general plugin in this process (imports nothing, so the API side can ask).

vLLM runs general plugins in the API process too, before endpoint plugins, and the engine
processes inherit its VLLM_PLUGINS: registered here means the engine half is active there.
"""

_engine_plugin_registered = False


def mark_engine_plugin_registered() -> None:
    global _engine_plugin_registered
    _engine_plugin_registered = True


def engine_plugin_registered() -> bool:
    return _engine_plugin_registered
