"""The boundary to the benchmark engine that sends and times the requests.

The engine is vLLM's serving benchmark (`steer_serve_vllm.bench`), found through the
`steer_serve.bench_engines` entry point so that this package never imports vLLM. It takes a
`BenchJob` and gives back vLLM's own metrics (overall and per traffic class) and one record per
request (status code and steer-serve response headers included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable

from steer_serve.loadtest.traffic import PlannedRequest

ENTRY_POINT_GROUP = "steer_serve.bench_engines"
RECORDED_HEADERS = ("x-steer-serve-fingerprint", "x-steer-serve-experiment", "x-steer-serve-arm")


@dataclass(frozen=True)
class BenchJob:
    base_url: str
    model: str
    tokenizer: str
    requests: list[PlannedRequest]
    rate: float  # requests/s; inf = all at once (closed loop when `concurrency` is set)
    process: str  # "poisson" or "constant" inter-arrival times
    concurrency: int | None
    api_key: str | None
    percentiles: list[float]
    goodput_ms: dict[str, float]  # per-request limits: ttft, tpot, e2el
    ignore_eos: bool
    temperature: float
    seed: int
    progress: bool = True


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    traffic_class: str
    success: bool
    status: int | None  # None: no HTTP answer (connection refused, reset, timeout)
    error: str
    ttft_s: float
    latency_s: float
    output_tokens: int
    prompt_tokens: int
    headers: dict[str, str] = field(default_factory=dict)  # the RECORDED_HEADERS present


@dataclass(frozen=True)
class BenchOutcome:
    duration_s: float
    overall: dict[str, float]  # vLLM's metric names: completed, p99_ttft_ms, request_goodput, ...
    classes: dict[str, dict[str, float]]
    records: list[RequestRecord]


BenchEngine = Callable[[BenchJob], BenchOutcome]


def load_engine(name: str = "vllm") -> BenchEngine:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        raise RuntimeError(f"no benchmark engine {name!r} installed (entry points {ENTRY_POINT_GROUP}: "
                           f"{sorted(found) or 'none'}); reinstall steer-serve")
    return found[name].load()
