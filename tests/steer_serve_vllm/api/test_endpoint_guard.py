"""Wherever vLLM runs our engine plugin, our endpoint plugin serves `steering` (or the server refuses to start)."""

from __future__ import annotations

import pytest

from steer_serve_vllm.api.endpoint_guard import ENDPOINT_PLUGIN, allow_listed, guard_endpoint_plugin_loading


def _load(monkeypatch: pytest.MonkeyPatch, vllm_plugins: str | None, tasks: tuple[str, ...]) -> list[str]:
    import vllm.plugins as plugins

    if vllm_plugins is None:
        monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("VLLM_PLUGINS", vllm_plugins)
    guard_endpoint_plugin_loading()
    return [plugin.name for plugin in plugins.load_endpoint_plugins(tasks)]


@pytest.mark.parametrize("vllm_plugins", [None, "steer_serve", "steer_serve,other"])
def test_added_when_vllm_would_not_load_it(monkeypatch, vllm_plugins: str | None) -> None:
    """`vllm serve` with VLLM_PLUGINS unset (or naming only the general plugin) still serves steering."""
    assert _load(monkeypatch, vllm_plugins, ("generate",)) == [ENDPOINT_PLUGIN]


def test_loaded_once_when_allow_listed(monkeypatch) -> None:
    assert _load(monkeypatch, "steer_serve,steer_serve_api", ("generate",)) == [ENDPOINT_PLUGIN]


def test_not_added_to_a_server_that_does_not_generate(monkeypatch) -> None:
    assert _load(monkeypatch, None, ("embed",)) == []


def test_allow_listed_but_failing_refuses_to_start(monkeypatch) -> None:
    import steer_serve_vllm.api.plugin as api_plugin

    def broken(self):  # noqa: ANN001 - stands in for a plugin whose import/instantiation fails
        raise ImportError("simulated")

    monkeypatch.setattr(api_plugin.SteerServeEndpointPlugin, "__init__", broken)
    with pytest.raises(RuntimeError, match="refusing to start"):
        _load(monkeypatch, "steer_serve,steer_serve_api", ("generate",))


def test_allow_list_parsing() -> None:
    assert allow_listed("steer_serve, steer_serve_api")
    assert not allow_listed(None)
    assert not allow_listed("")
    assert not allow_listed("steer_serve")


def test_api_half_without_engine_half_refuses_to_start(monkeypatch) -> None:
    """VLLM_PLUGINS=steer_serve_api alone: vLLM runs no general plugin, so the engine would not steer."""
    from steer_serve_vllm import registration
    from steer_serve_vllm.api.plugin import _require_engine_plugin

    monkeypatch.setattr(registration, "_engine_plugin_registered", False)
    with pytest.raises(RuntimeError, match="without the steer_serve engine plugin"):
        _require_engine_plugin()
    registration.mark_engine_plugin_registered()
    _require_engine_plugin()
