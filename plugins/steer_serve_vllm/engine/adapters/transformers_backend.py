"""Families vLLM 0.32 serves through its Transformers backend (`TransformersForCausalLM`, the HF
modules with vLLM attention and parallel linears): the HF base model sits at `model`, its
decoder layers return the stream as one tensor (transformers 5)."""

from steer_serve_vllm.engine.adapters.base import Adapter

GPT_NEOX = Adapter(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    layers_path="model.layers",
    stream="tensor",
    attention_out="attention.dense",
)

OLMO2 = Adapter(
    name="olmo2",
    architectures=("Olmo2ForCausalLM",),
    layers_path="model.layers",
    stream="tensor",
    attention_out="self_attn.o_proj",
)
