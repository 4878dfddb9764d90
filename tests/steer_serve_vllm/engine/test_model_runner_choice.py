"""The general plugin picks vLLM's V1 model runner on CUDA unless the user chose."""

from __future__ import annotations

from steer_serve_vllm.engine.model_runner_choice import RUNNER_VARIABLE, pin_v1_model_runner


def test_cuda_without_a_choice_gets_the_v1_runner() -> None:
    environ: dict[str, str] = {}
    assert pin_v1_model_runner(environ, cuda_alike=True)
    assert environ == {RUNNER_VARIABLE: "0"}


def test_an_explicit_choice_is_kept() -> None:
    for value in ("0", "1"):
        environ = {RUNNER_VARIABLE: value}
        assert not pin_v1_model_runner(environ, cuda_alike=True)
        assert environ == {RUNNER_VARIABLE: value}


def test_other_platforms_are_left_alone() -> None:
    environ: dict[str, str] = {}
    assert not pin_v1_model_runner(environ, cuda_alike=False)
    assert environ == {}


def test_vllm_reads_the_pinned_value_as_v1() -> None:
    """vLLM's own parser turns the value we set into 'V2 off' (VllmConfig.use_v2_model_runner reads it)."""
    import os

    import vllm.envs as envs

    saved = os.environ.pop(RUNNER_VARIABLE, None)
    try:
        pin_v1_model_runner(os.environ, cuda_alike=True)
        assert envs.VLLM_USE_V2_MODEL_RUNNER is False
    finally:
        os.environ.pop(RUNNER_VARIABLE, None)
        if saved is not None:
            os.environ[RUNNER_VARIABLE] = saved
