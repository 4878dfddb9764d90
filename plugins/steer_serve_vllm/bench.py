"""The load-test engine: vLLM's serving benchmark (`vllm.benchmarks.serve`), so that TTFT, TPOT,
ITL, E2E latency, throughput and goodput are computed exactly as in vLLM's published numbers.

What vLLM's benchmark does not give, and this module adds by wrapping its request function (the
request itself is still vLLM's): the HTTP status of every answer and steer-serve's response
headers (steering fingerprint, experiment arm), and metrics per traffic class (vLLM's own
`calculate_metrics` on each class's requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from steer_serve.loadtest.engine import RECORDED_HEADERS, BenchJob, BenchOutcome, RequestRecord

ENDPOINT_KEY = "steer-serve-recording"  # our entry in vLLM's ASYNC_REQUEST_FUNCS while a run lasts
METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class _Seen:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Recording:
    """Wraps aiohttp's `session.post(...)` context manager: notes the answer's status and headers."""

    def __init__(self, context: Any, seen: _Seen) -> None:
        self._context, self._seen = context, seen

    async def __aenter__(self) -> Any:
        response = await self._context.__aenter__()
        self._seen.status = response.status
        self._seen.headers = {h: response.headers[h] for h in RECORDED_HEADERS if h in response.headers}
        return response

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._context.__aexit__(*exc)


class _RecordingSession:
    """Stands in for the benchmark's aiohttp session for one request (only `post` is used)."""

    def __init__(self, session: Any, seen: _Seen) -> None:
        self._session, self._seen = session, seen

    def post(self, *args: Any, **kwargs: Any) -> _Recording:
        return _Recording(self._session.post(*args, **kwargs), self._seen)


def _recording(request_func: Any, seen: dict[str, _Seen]) -> Any:
    async def request(request_func_input: Any, session: Any, pbar: Any = None) -> Any:
        note = seen.setdefault(request_func_input.request_id, _Seen())
        return await request_func(request_func_input=request_func_input, session=_RecordingSession(session, note),
                                  pbar=pbar)
    return request


def run_bench(job: BenchJob) -> BenchOutcome:
    from vllm.benchmarks.lib.endpoint_request_func import ASYNC_REQUEST_FUNCS
    from vllm.benchmarks.serve import TaskType, benchmark
    from vllm.tokenizers import get_tokenizer

    chat = job.requests[0].is_chat
    inner = ASYNC_REQUEST_FUNCS["openai-chat" if chat else "openai"]
    outputs: dict[str, Any] = {}
    seen: dict[str, _Seen] = {}

    async def keep(request_func_input: Any, session: Any, pbar: Any = None) -> Any:
        output = await _recording(inner, seen)(request_func_input, session, pbar)
        outputs[request_func_input.request_id] = output
        return output

    tokenizer = get_tokenizer(job.tokenizer)
    samples = _samples(job)
    np.random.seed(job.seed)  # vLLM draws the inter-arrival gaps from numpy's global generator
    call = benchmark(
        task_type=TaskType.GENERATION, endpoint_type=ENDPOINT_KEY,
        api_url=f"{job.base_url}/v1/{'chat/completions' if chat else 'completions'}", base_url=job.base_url,
        model_id=job.model, model_name=job.model, tokenizer=tokenizer, input_requests=samples, logprobs=None,
        request_rate=job.rate, burstiness=1.0 if job.process == "poisson" else math.inf,
        disable_tqdm=not job.progress, num_warmups=0, profile=False, selected_percentile_metrics=list(METRICS),
        selected_percentiles=job.percentiles, ignore_eos=job.ignore_eos, goodput_config_dict=job.goodput_ms,
        max_concurrency=job.concurrency, lora_modules=None,
        extra_headers={"Authorization": f"Bearer {job.api_key}"} if job.api_key else None,
        extra_body={"temperature": job.temperature},
        ready_check_timeout_sec=0,  # the scenario was checked against the server; no extra request
    )
    ASYNC_REQUEST_FUNCS[ENDPOINT_KEY] = keep
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # vLLM prints its own tables; the report has ours
            result = asyncio.run(call)
    finally:
        ASYNC_REQUEST_FUNCS.pop(ENDPOINT_KEY, None)
    ordered = [outputs[s.request_id] for s in samples]
    return _outcome(job, samples, ordered, seen, result["duration"], tokenizer)


def _samples(job: BenchJob) -> list[Any]:
    from vllm.benchmarks.datasets.datasets import SampleRequest

    return [SampleRequest(prompt="" if r.is_chat else r.prompt, prompt_len=r.prompt_len,
                          expected_output_len=r.output_len, request_id=r.request_id,
                          chat_messages=r.prompt if r.is_chat else None, request_overrides=r.overrides)
            for r in job.requests]


def _metrics(job: BenchJob, samples: list[Any], outputs: list[Any], duration: float, tokenizer: Any) -> dict:
    """vLLM's `calculate_metrics` for these requests, flattened to vLLM's result names."""
    from vllm.benchmarks.serve import calculate_metrics

    with contextlib.redirect_stdout(io.StringIO()):
        metrics, _ = calculate_metrics(input_requests=samples, outputs=outputs, dur_s=duration, tokenizer=tokenizer,
                                       selected_percentiles=job.percentiles, goodput_config_dict=job.goodput_ms)
    flat = {k: v for k, v in asdict(metrics).items() if not k.startswith("percentiles_")}
    for metric in METRICS:
        for p, value in getattr(metrics, f"percentiles_{metric}_ms"):
            flat[f"p{p:g}_{metric}_ms"] = float(value)
    flat["sent"] = len(outputs)
    flat["good"] = round(metrics.request_goodput * duration) if job.goodput_ms else metrics.completed
    return {k: float(v) for k, v in flat.items()}


def _outcome(job: BenchJob, samples: list[Any], outputs: list[Any], seen: dict[str, _Seen], duration: float,
             tokenizer: Any) -> BenchOutcome:
    classes: dict[str, list[int]] = {}
    for i, planned in enumerate(job.requests):
        classes.setdefault(planned.traffic_class, []).append(i)
    per_class = {name: _metrics(job, [samples[i] for i in rows], [outputs[i] for i in rows], duration, tokenizer)
                 for name, rows in classes.items()}
    records = [RequestRecord(p.request_id, p.traffic_class, o.success, seen.get(p.request_id, _Seen()).status,
                             o.error.strip().splitlines()[-1] if o.error else "", o.ttft, o.latency,
                             o.output_tokens or 0, o.prompt_len, seen.get(p.request_id, _Seen()).headers)
               for p, o in zip(job.requests, outputs)]
    return BenchOutcome(duration, _metrics(job, samples, outputs, duration, tokenizer), per_class, records)
