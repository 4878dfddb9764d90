"""DeepSeek-V2/V3/R1 (vLLM's `deepseek_v2.py`): (hidden, residual) layers, MLA attention whose
output enters `self_attn.o_proj`, router `mlp.gate` (GateLinear). V2 routes with grouped
softmax top-k (router logits edited); V3/R1 (`topk_method = "noaux_tc"`) select on
sigmoid(logit) + e_score_correction_bias, so the engine edits the selection score instead.
Layers below `first_k_dense_replace` are dense: their experts edits are refused."""

from steer_serve_vllm.engine.adapters.base import Adapter

DEEPSEEK = Adapter(
    name="deepseek",
    architectures=("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"),
    layers_path="model.layers",
    stream="pair",
    attention_out="self_attn.o_proj",
)
