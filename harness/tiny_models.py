"""Tiny random-weight models built by the tests (no downloads), saved as HF directories.

All share the default model's tokenizer (vocab 49152) and use head_dim 64 (the CPU attention
kernel rejects smaller heads).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MixtralConfig,
    OlmoeConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
)

TINY_HIDDEN = 128  # hidden size of every tiny model (head_dim 64, 2 heads)
TINY_LAYERS = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
_COMMON = dict(
    hidden_size=TINY_HIDDEN, intermediate_size=256, num_hidden_layers=TINY_LAYERS, num_attention_heads=2, num_key_value_heads=2,
    head_dim=64, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2, initializer_range=0.05,
)
_MOE = dict(num_experts_per_tok=2, router_jitter_noise=0.0)

CONFIGS: dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**_COMMON),
    "qwen2": Qwen2Config(**_COMMON),
    "mixtral": MixtralConfig(**_COMMON, **_MOE, num_local_experts=4),
    "qwen2_moe": Qwen2MoeConfig(
        **_COMMON, **_MOE, num_experts=4, moe_intermediate_size=128, shared_expert_intermediate_size=128,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False,
    ),
    "olmoe": OlmoeConfig(**_COMMON, **_MOE, num_experts=4, norm_topk_prob=False),
}


def build_tiny_model(kind: str, target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a random-init model of one of CONFIGS with the default model's tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[kind]).to(torch.float32)
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, target / name)
    return target


def build_tiny_llama(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    return build_tiny_model("llama", target, tokenizer_dir, seed)
