"""Every vLLM symbol steer-serve patches, replaces, adds or relies on: why, and what would let us drop it.

`tests/steer_serve_vllm/engine/test_worker_patches.py` checks it against the installed vLLM: run it
first after a vLLM upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

from steer_serve_vllm.names import STATS_METHOD


@dataclass(frozen=True)
class PatchRecord:
    symbol: str
    why: str
    drop_when: str


LEDGER = (
    PatchRecord(
        "vllm.plugins.load_endpoint_plugins (API process; endpoint_guard.py)",
        "raise when our endpoint plugin fails to load, instead of vLLM's log-and-continue, which "
        "would serve every steered request unsteered",
        "vLLM makes endpoint plugin failures fatal or configurable",
    ),
    PatchRecord(
        "engine_client.shutdown (API process; the AsyncLLM instance only; engine_death.py)",
        "mark a deliberate stop, so that an EngineCore process ending without it is an engine death "
        "and the server exits non-zero (vLLM 0.32 exits 0) for supervisors to restart it",
        "vLLM exits non-zero after an engine death",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner.load_model",
        "allocate steering tables and install decoder-layer hooks after weights load and before "
        "the warm-up/compile run traces the model (later hooks are ignored under torch.compile)",
        "vLLM offers a post-load model hook for plugins",
    ),
    PatchRecord(
        "vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model",
        "same as GPUModelRunner.load_model: the CPU runner overrides it without calling super()",
        "as above",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu.model_runner.GPUModelRunner.load_model (Model Runner V2, GPU only)",
        "refuse to start: steering is implemented for the V1 runner, and an engine on V2 would "
        "silently ignore every steering payload. `steer-serve serve` sets VLLM_USE_V2_MODEL_RUNNER=0",
        "steering is ported to Model Runner V2",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner._update_states",
        "register new requests' steering payload (SamplingParams.extra_args) when they first arrive",
        "vLLM exposes per-request hooks to plugins",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner._on_request_state_removed",
        "release a finished request's steering slot (vLLM's own hook point for request-scoped caches)",
        "never: this is the intended extension point; we only chain onto it",
    ),
    PatchRecord(
        "vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs",
        "build the token->table-row index in the forward's final token order each step",
        "vLLM exposes per-step token metadata to plugins (as it does for LoRA's token mapping)",
    ),
    PatchRecord(
        f"vllm.v1.worker.gpu_worker.Worker.{STATS_METHOD} (added; CPUWorker inherits it)",
        "answer `collective_rpc(\"steer_serve_stats\")` from the API process with this worker's steering "
        "bookkeeping (GET /v1/steering/engine); collective_rpc looks worker methods up by name",
        "vLLM's --worker-extension-cls is set by every launcher we support (it adds methods without a patch)",
    ),
)
