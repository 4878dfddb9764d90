"""vLLM's own Llama-family decoder layers: `model.layers[L]` returns (hidden, residual) and the
stream after layer L is their sum; attention output enters `self_attn.o_proj`; MoE variants
route with a `GateLinear` named `gate` (softmax top-k)."""

from steer_serve_vllm.engine.adapters.base import Adapter

LLAMA = Adapter(
    name="llama",
    architectures=(
        "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
        "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
        "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "OlmoeForCausalLM",
    ),
    layers_path="model.layers",
    stream="pair",
    attention_out="self_attn.o_proj",
)
