"""vLLM's compile-cache key sees steer-serve: a new `--max-dose` (STEER_SERVE_MAX_DOSE) or the plugin's
absence gives a new key.

The config is vLLM's real one for the tiny model (`EngineArgs.create_engine_config`, which loads the
installed general plugins as `vllm serve` does); the keys are the ones vLLM 0.32 names its AOT cache
directory after (`aot_compile_hash_factors`, hashed as in `compilation/decorators.py`).
"""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture(scope="module")
def vllm_config(tiny_llama_dir):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(tiny_llama_dir), dtype="float32", max_model_len=256).create_engine_config()


def _aot_key(vllm_config) -> str:
    from vllm.compilation.caching import aot_compile_hash_factors

    return hashlib.sha256(str(aot_compile_hash_factors(vllm_config)).encode()).hexdigest()


def _key_with(monkeypatch: pytest.MonkeyPatch, vllm_config, max_dose: str | None) -> str:
    if max_dose is None:
        monkeypatch.delenv("STEER_SERVE_MAX_DOSE", raising=False)
    else:
        monkeypatch.setenv("STEER_SERVE_MAX_DOSE", max_dose)
    return _aot_key(vllm_config)


def test_max_dose_changes_the_key(monkeypatch, vllm_config) -> None:
    keys = {dose: _key_with(monkeypatch, vllm_config, dose) for dose in (None, "0.5", "0.7")}
    assert len(set(keys.values())) == 3
    assert _key_with(monkeypatch, vllm_config, "0.5") == keys["0.5"]  # and is stable


def test_the_plugin_itself_changes_the_key(monkeypatch, vllm_config) -> None:
    from vllm.config import VllmConfig

    salted = VllmConfig.compute_hash
    assert getattr(salted, "steer_serve_wrapper", False), "the installed general plugin did not salt the key"
    with_plugin = _key_with(monkeypatch, vllm_config, None)
    monkeypatch.setattr(VllmConfig, "compute_hash", salted.__wrapped__)  # vLLM's own method: plain vLLM
    assert _aot_key(vllm_config) != with_plugin
    assert len(salted(vllm_config)) == len(salted.__wrapped__(vllm_config))


def test_the_steering_budget_changes_the_key(monkeypatch, vllm_config) -> None:
    """The pool, slot and projection counts are table shapes the compiled graph was traced with."""
    monkeypatch.delenv("STEER_SERVE_MAX_DOSE", raising=False)
    keys = set()
    for memory, slots, projections in (("32", "256", "2"), ("8", "256", "2"), ("32", "16", "2"), ("32", "256", "8")):
        monkeypatch.setenv("STEER_SERVE_STEERING_MEMORY", memory)
        monkeypatch.setenv("STEER_SERVE_STEERING_SLOTS", slots)
        monkeypatch.setenv("STEER_SERVE_STEERING_PROJECTIONS", projections)
        keys.add(_aot_key(vllm_config))
    assert len(keys) == 4


def test_the_site_switches_change_the_key(monkeypatch, vllm_config) -> None:
    """--no-head-sites / --no-expert-sites leave op calls out of the compiled graph."""
    monkeypatch.delenv("STEER_SERVE_MAX_DOSE", raising=False)
    keys = set()
    for heads, experts in (("true", "true"), ("false", "true"), ("true", "false")):
        monkeypatch.setenv("STEER_SERVE_HEAD_SITES", heads)
        monkeypatch.setenv("STEER_SERVE_EXPERT_SITES", experts)
        keys.add(_aot_key(vllm_config))
    assert len(keys) == 3
