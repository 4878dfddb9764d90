"""Pick the adapter of a loaded model by its HF architecture name; unknown families refuse to
start (steering them would be unproven at best, a silent no-op at worst)."""

from __future__ import annotations

from steer_serve_vllm.engine.adapters.base import Adapter
from steer_serve_vllm.engine.adapters.deepseek import DEEPSEEK
from steer_serve_vllm.engine.adapters.gpt2 import GPT2
from steer_serve_vllm.engine.adapters.gpt_oss import GPT_OSS
from steer_serve_vllm.engine.adapters.llama import LLAMA
from steer_serve_vllm.engine.adapters.transformers_backend import GPT_NEOX, OLMO2

ADAPTERS = (LLAMA, GPT2, GPT_NEOX, OLMO2, DEEPSEEK, GPT_OSS)


def adapter_for(architectures: list[str] | None) -> Adapter:
    for name in architectures or []:
        for adapter in ADAPTERS:
            if name in adapter.architectures:
                return adapter
    known = sorted(a for adapter in ADAPTERS for a in adapter.architectures)
    raise RuntimeError(f"steer-serve: no model adapter for architecture {architectures}; supported: {', '.join(known)}")
