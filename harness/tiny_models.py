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
    DeepseekV2Config,
    DeepseekV3Config,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    GptOssConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    OlmoeConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
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
_SIZES = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, initializer_range=0.05, tie_word_embeddings=False)
# DeepSeek's MLA attention runs on vLLM CPU only with kv_lora_rank + qk_rope_head_dim = 576.
_DEEPSEEK = dict(
    **_SIZES, hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048, kv_lora_rank=512,
    q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64, n_routed_experts=8,
    num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, n_shared_experts=1,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
# DeepSeek-V3's correction bias: uneven, one expert (DEEPSEEK_V3_FAVOURED) strongly favoured.
DEEPSEEK_V3_FAVOURED = 5
DEEPSEEK_V3_BIAS = (0.02, -0.03, 0.05, 0.0, 0.01, 0.6, -0.02, 0.04)

CONFIGS: dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**_COMMON),
    "qwen2": Qwen2Config(**_COMMON),
    "mixtral": MixtralConfig(**_COMMON, **_MOE, num_local_experts=4),
    "qwen2_moe": Qwen2MoeConfig(
        **_COMMON, **_MOE, num_experts=4, moe_intermediate_size=128, shared_expert_intermediate_size=128,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False,
    ),
    # OlmoeConfig's pad_token_id defaults to 1, our BOS: HF then zeroes BOS's embedding, and a BOS stream of
    # exact zeros turns an add+ablate of one vector into rounding noise that RMSNorm scales up to O(1)
    "olmoe": OlmoeConfig(**_COMMON, **_MOE, num_experts=4, norm_topk_prob=False, pad_token_id=0),
    "mistral": MistralConfig(**_COMMON, sliding_window=None),
    "qwen3": Qwen3Config(**_COMMON),
    # vLLM's Gemma2ForCausalLM has no lm_head: the embeddings are always tied
    "gemma2": Gemma2Config(**(_COMMON | dict(tie_word_embeddings=True)), query_pre_attn_scalar=64, sliding_window=512),
    "gemma3": Gemma3TextConfig(**_COMMON, query_pre_attn_scalar=64, sliding_window=512),
    "phi3": Phi3Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"}, pad_token_id=0),
    "olmo2": Olmo2Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"}, pad_token_id=0),
    "gpt_neox": GPTNeoXConfig(**_SIZES, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                              num_attention_heads=2, max_position_embeddings=2048),
    "gpt2": GPT2Config(**_SIZES, n_embd=128, n_layer=4, n_head=2, n_positions=1024),
    "qwen3_moe": Qwen3MoeConfig(**_COMMON, **_MOE, num_experts=4, moe_intermediate_size=128, norm_topk_prob=True,
                                decoder_sparse_step=1, mlp_only_layers=[]),
    "deepseek_v2": DeepseekV2Config(**_DEEPSEEK, topk_method="group_limited_greedy", routed_scaling_factor=1.0,
                                    norm_topk_prob=False),
    # noaux_tc: vLLM attaches e_score_correction_bias only for this topk_method (DeepSeek-V3's own config says so)
    # scoring_func: vLLM reads it from the config (default softmax); DeepSeek-V3's config.json says sigmoid
    "deepseek_v3": DeepseekV3Config(**_DEEPSEEK, topk_method="noaux_tc", scoring_func="sigmoid",
                                    routed_scaling_factor=2.5, norm_topk_prob=True),
    "gpt_oss": GptOssConfig(**(_COMMON | dict(max_position_embeddings=131072)), **_MOE, num_local_experts=4,
                            sliding_window=128),
}
DENSE_KINDS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "olmo2", "gpt_neox", "gpt2")
MOE_KINDS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss")


def build_tiny_model(kind: str, target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a random-init model of one of CONFIGS with the default model's tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[kind]).to(torch.float32)
    if kind == "deepseek_v3":
        for layer in model.model.layers[CONFIGS[kind].first_k_dense_replace:]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.tensor(DEEPSEEK_V3_BIAS))
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, target / name)
    return target


def build_tiny_llama(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    return build_tiny_model("llama", target, tokenizer_dir, seed)
