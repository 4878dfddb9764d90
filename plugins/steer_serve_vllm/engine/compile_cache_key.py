"""Make vLLM's compile-cache key see steer-serve.

vLLM 0.32 names both of its compile caches after `VllmConfig.compute_hash()`: the AOT cache
(`compilation/caching.py: aot_compile_hash_factors` -> `torch_compile_cache/torch_aot_compile/<key>`)
and the inductor cache directory (`compilation/backends.py: VllmBackend.__call__`). Our decoder
hooks are in the compiled graph (as one opaque op per site; traced in, op by op, on DeepSeek-V3),
and where traced, `max_dose` is a Python constant baked into it (the
table shapes set by `steering_memory` / `steering_slots` / `steering_projections` / `observe_memory`
are too, and so are the TopK encoders of `topk_clamp_saes` and which sites `head_sites` /
`expert_sites` install), but
neither is part of the config, so a server restarted with another `--max-dose` (or without the
plugin) would find the old graph under the same key. The general plugin therefore wraps
`compute_hash` to mix in `graph_settings()`: a new setting gives a new key, the plugin's
presence alone gives a key plain vLLM never uses. (hotwire-vllm salts the same method.)
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from steer_serve.settings import Settings

PLUGIN_NAME = "steer_serve"


def graph_settings() -> dict[str, Any]:
    """Every plugin setting that changes the compiled graph (read from the environment, as the
    engine reads it when it installs the hooks)."""
    from importlib.metadata import version

    settings = Settings()
    return {"plugin": PLUGIN_NAME, "version": version("steer-serve"), "max_dose": settings.max_dose,
            "steering_memory": settings.steering_memory, "steering_slots": settings.steering_slots,
            "observe_memory": settings.observe_memory, "steering_projections": settings.steering_projections,
            "head_sites": settings.head_sites, "expert_sites": settings.expert_sites,
            "topk_clamp_saes": {name: _file_digest(settings.sae_dir / name) for name in settings.topk_clamp_saes}}


def _file_digest(base: Path) -> str:
    """The TopK encoders' sizes (d_sae, k, layer) shape the traced graph: hash the SAE's files."""
    digest = hashlib.sha256()
    for path in (base.with_suffix(".json"), base.with_suffix(".safetensors")):
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()


def salt_compile_cache_key() -> None:
    """Idempotent: wrap `VllmConfig.compute_hash` (every process; the key is computed in workers)."""
    from vllm.config import VllmConfig

    original = VllmConfig.compute_hash
    if getattr(original, "steer_serve_wrapper", False):
        return

    @functools.wraps(original)
    def compute_hash(self: Any, *args: Any, **kwargs: Any) -> str:
        key = original(self, *args, **kwargs)
        salt = json.dumps(graph_settings(), sort_keys=True)
        return hashlib.sha256(f"{key}|{salt}".encode()).hexdigest()[: len(key)]

    compute_hash.steer_serve_wrapper = True  # type: ignore[attr-defined]
    VllmConfig.compute_hash = compute_hash
