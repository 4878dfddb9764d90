"""The only place the load tests touch vLLM internals: vLLM's own serving benchmark.

Using `vllm.benchmarks.serve.benchmark` means TTFT, TPOT, ITL, end-to-end latency, throughput
and goodput are defined exactly as in vLLM's published numbers. Per-request steering travels
in `SampleRequest.request_overrides`, which vLLM merges into each request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any

METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class BenchRequest:
    prompt: list[int]
    output_len: int
    overrides: dict[str, Any] | None  # merged into the body: {"steering": ...}, {"user": ...}


def run_benchmark(base_url: str, model: str, requests: list[BenchRequest], *, concurrency: int | None,
                  rate: float = math.inf) -> dict[str, Any]:
    """Run one benchmark (closed loop with `concurrency`, open loop Poisson with `rate`).

    `model` is the served model's local directory (also its tokenizer, which vLLM's benchmark
    needs to count output tokens for TTFT/TPOT/ITL)."""
    from vllm.benchmarks.datasets.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark
    from vllm.tokenizers import get_tokenizer

    samples = [
        SampleRequest(prompt=r.prompt, prompt_len=len(r.prompt), expected_output_len=r.output_len,
                      request_overrides=r.overrides)
        for r in requests
    ]
    call = benchmark(
        task_type=TaskType.GENERATION, endpoint_type="openai", api_url=f"{base_url}/v1/completions",
        base_url=base_url, model_id=model, model_name=model, tokenizer=get_tokenizer(model), input_requests=samples,
        logprobs=None, request_rate=rate, burstiness=1.0, disable_tqdm=True, num_warmups=0, profile=False,
        selected_percentile_metrics=list(METRICS), selected_percentiles=list(PERCENTILES), ignore_eos=True,
        goodput_config_dict={}, max_concurrency=concurrency, lora_modules=None, extra_headers=None,
        extra_body={"temperature": 0.0},
    )
    with contextlib.redirect_stdout(io.StringIO()):  # vLLM prints its own table; we write ours
        result = asyncio.run(call)
    return _summary(result)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    keep = ["duration", "completed", "failed", "total_output_tokens", "request_throughput", "output_throughput"]
    summary = {key: result[key] for key in keep if key in result}
    for metric in METRICS:
        for stat in ("mean", "median"):
            summary[f"{stat}_{metric}_ms"] = result.get(f"{stat}_{metric}_ms")
        for p in PERCENTILES:
            summary[f"p{int(p)}_{metric}_ms"] = result.get(f"p{int(p)}_{metric}_ms")
    summary["errors"] = [e for e in result.get("errors", []) if e][:5]
    return summary
