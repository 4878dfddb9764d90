"""vLLM's in-process engine (`vllm.LLM`) behind the same gateway the API server runs.

The architecture matrix proves the engine's hooks per architecture; the HTTP path is the same
for every architecture and is tested on real servers elsewhere. A server costs ~50 s to start
(~110 s compiled), mostly process start-up and imports, so the matrix runs in this process:
vLLM is imported once and one engine per (architecture, mode) is built and torn down in turn
(VLLM_ENABLE_V1_MULTIPROCESSING=0: engine core and worker in this process, where our general
plugin patches the model runner exactly as it does in a server's worker).

Requests go through what the API process does to them: `RequestGateway.prepare` validates and
resolves the `steering` field against the engine's capability report (the same
`collective_rpc` handshake the endpoint plugin makes) and rewrites the body; its `vllm_xargs`
become `SamplingParams.extra_args` and its `cache_salt` the prompt's salt, as vLLM's OpenAI
layer would make them. A refusal comes back as the 400 the server would answer.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from harness.completions import completion_body
from harness.hf_reference import Generation
from harness.servers import KV_CACHE_BYTES

PATH = "/v1/completions"
# engine core and worker in this process; TP worker processes still alive 1 s after shutdown get
# SIGTERM (vLLM's default grace, 5 s, is what they take to exit on their own; read when the engine
# starts: vLLM caches every VLLM_* variable then). The KV cache is sized as the test servers' is.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "1"}


@dataclass(frozen=True)
class Refusal:
    """What the server would answer instead of a completion."""

    status: int
    message: str


Request = tuple[list[int], dict | None, int]  # (prompt token ids, steering object or None, max tokens)


class InProcessEngine:
    """One vLLM engine in this process; `compile_backend` None means eager; `custom_ops` as vLLM's
    `--compilation-config '{"custom_ops": [...]}'` ("-name" switches one off); `env` (e.g. the
    OpenMP binding) set while the engine starts.

    `tensor_parallel_size` > 1: the engine core stays in this process and vLLM's multiprocessing
    executor spawns one worker process per rank (the CPU platform forces `spawn`); each imports
    vLLM afresh and loads the general plugins from their entry points, so our plugin patches every
    rank's runner as in a server. The workers inherit the environment at spawn: `env` is where
    each rank's core goes (VLLM_CPU_OMP_THREADS_BIND="0|1")."""

    def __init__(self, model: Path, vector_dir: Path, *, compile_backend: str | None = None,
                 attention_backend: str | None = None, custom_ops: tuple[str, ...] = (),
                 tensor_parallel_size: int = 1, env: dict[str, str] | None = None) -> None:
        import torch

        # vLLM's CPU worker replaces torch.set_num_threads process-wide; the tests' HF references need it back
        self._threads = (torch.set_num_threads, torch.get_num_threads())
        from vllm import LLM

        from steer_serve.engine_capabilities import WorkerCapabilities, merge
        from steer_serve.library.vector_library import VectorLibrary
        from steer_serve.request.steering_resolver import SteeringResolver
        from steer_serve.settings import Settings
        from steer_serve_vllm.api.gateway import RequestGateway
        from steer_serve_vllm.names import CAPABILITIES_METHOD

        options: dict[str, Any] = dict(model=str(model), dtype="float32", max_model_len=1024, max_num_seqs=32,
                                       seed=0, enforce_eager=compile_backend is None,
                                       kv_cache_memory_bytes=KV_CACHE_BYTES,
                                       tensor_parallel_size=tensor_parallel_size)
        compilation: dict[str, Any] = {"custom_ops": list(custom_ops)} if custom_ops else {}
        if compile_backend is not None:
            compilation["backend"] = compile_backend
        if compilation:
            options["compilation_config"] = compilation
        if attention_backend is not None:
            options["attention_backend"] = attention_backend
        self.model = str(model)
        with _environment(ENGINE_ENV | (env or {})):
            self.llm = LLM(**options)
        answers = self.llm.collective_rpc(CAPABILITIES_METHOD)
        # one report per rank (TP: one per worker process), merged as the API process merges them
        self.workers = sorted((WorkerCapabilities.model_validate(a) for a in answers if a is not None),
                              key=lambda w: w.rank)
        self.shape = merge(self.model, self.workers)
        library = VectorLibrary.load_dir(vector_dir, self.shape)
        resolver = SteeringResolver(self.shape, library, Settings(vector_dir=vector_dir))
        self.gateway = RequestGateway(resolver)

    def complete(self, requests: list[Request]) -> list[Generation | Refusal]:
        """Greedy completions of all admitted requests in one engine batch, in request order."""
        from vllm import SamplingParams

        from steer_serve_vllm.api.gateway import Rejection

        outcomes: list[Generation | Refusal | None] = []
        prompts, params = [], []
        for prompt, steering, max_tokens in requests:
            body = completion_body(self.model, prompt, max_tokens, steering)
            verdict = self.gateway.prepare(PATH, json.dumps(body).encode())
            if isinstance(verdict, Rejection):
                outcomes.append(Refusal(verdict.status, verdict.message))
                continue
            sent = body if verdict.body is None else json.loads(verdict.body)
            outcomes.append(None)
            prompt_entry: dict[str, Any] = {"prompt_token_ids": sent["prompt"]}
            if sent.get("cache_salt"):
                prompt_entry["cache_salt"] = sent["cache_salt"]
            prompts.append(prompt_entry)
            params.append(SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1, ignore_eos=True,
                                         extra_args=sent.get("vllm_xargs")))
        results = iter(self.llm.generate(prompts, params, use_tqdm=False) if prompts else [])
        return [outcome if outcome is not None else _generation(next(results)) for outcome in outcomes]

    def close(self) -> None:
        import torch
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        from vllm.model_executor.layers import rotary_embedding

        from vllm import envs

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        # the engine core froze the heap (gc.freeze) and cached every VLLM_* variable when it started:
        # undo both, or each engine's KV cache stays and later engines see this one's settings.
        # vLLM also caches rotary modules per process (get_rope), each with the custom-op dispatch of the
        # engine that built it: a later engine with other custom_ops (eager vs compiled) would reuse it.
        gc.unfreeze()
        gc.collect()
        envs.disable_envs_cache()
        rotary_embedding._ROPE_DICT.clear()
        cleanup_dist_env_and_memory()
        torch.set_num_threads = self._threads[0]
        torch.set_num_threads(self._threads[1])


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set while the engine starts; the whole environment as it was afterwards (vLLM's CPU
    platform also sets LD_PRELOAD, LOCAL_WORLD_SIZE, ... for its workers: not for later servers)."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _generation(output: Any) -> Generation:
    completion = output.outputs[0]
    tokens = list(completion.token_ids)
    return Generation(tokens, [float(step[token].logprob) for token, step in zip(tokens, completion.logprobs)])
