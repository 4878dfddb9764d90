"""gpt-oss (vLLM's `gpt_oss.py`): (output, residual) layers, attention output into
`attn.o_proj`, and a biased router `mlp.router` (GateLinear) computed outside the MoE op:
top-k of the logits, softmax over the chosen k. Its logits are the edit point."""

from steer_serve_vllm.engine.adapters.base import Adapter

GPT_OSS = Adapter(
    name="gpt_oss",
    architectures=("GptOssForCausalLM",),
    layers_path="model.layers",
    stream="pair",
    attention_out="attn.o_proj",
)
