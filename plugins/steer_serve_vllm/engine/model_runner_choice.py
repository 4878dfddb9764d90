"""Choose vLLM's V1 model runner on CUDA when the user has not chosen one.

vLLM 0.32 runs Model Runner V2 by default on CUDA (`VllmConfig.use_v2_model_runner`, read from
`VLLM_USE_V2_MODEL_RUNNER` when set), and steering is implemented for the V1 runner only (V2's
`load_model` is replaced with an error, see worker_patches). `steer-serve serve` sets the variable;
a plain `vllm serve` does not, so the general plugin sets it in the API process, where it loads
before vLLM parses its arguments and before any engine process is spawned (they inherit it).
An explicit choice is kept: `VLLM_USE_V2_MODEL_RUNNER=1` then fails at start-up with that error.
"""

from __future__ import annotations

from collections.abc import MutableMapping

RUNNER_VARIABLE = "VLLM_USE_V2_MODEL_RUNNER"


def pin_v1_model_runner(environ: MutableMapping[str, str], cuda_alike: bool) -> bool:
    """Set VLLM_USE_V2_MODEL_RUNNER=0 on CUDA-like platforms unless it is set; True if it was set here."""
    if not cuda_alike or RUNNER_VARIABLE in environ:
        return False
    environ[RUNNER_VARIABLE] = "0"
    return True
