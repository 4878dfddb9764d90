"""GPT-2 (vLLM's `gpt2.py`): blocks in `transformer.h` return the stream as one tensor; the
attention output enters `attn.c_proj`."""

from steer_serve_vllm.engine.adapters.base import Adapter

GPT2 = Adapter(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    layers_path="transformer.h",
    stream="tensor",
    attention_out="attn.c_proj",
)
