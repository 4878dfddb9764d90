"""The server's own /metrics, read before and after each run (and sampled during it), so the
report can set the client's counts beside the server's: requests finished, tokens, vLLM queue
time, preemptions, KV-cache use, steer-serve's per-status request counter."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

SUCCESS = "vllm:request_success_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
QUEUE_SUM, QUEUE_COUNT = "vllm:request_queue_time_seconds_sum", "vllm:request_queue_time_seconds_count"
PREEMPTIONS = "vllm:num_preemptions_total"
WAITING, RUNNING, KV_USAGE = "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"
STEER_REQUESTS = "steer_serve:requests_total"
STEER_TOKENS = "steer_serve:generation_tokens_total"
STEER_REJECTIONS = "steer_serve:validation_rejections_total"


@dataclass(frozen=True)
class Snapshot:
    values: dict[Sample, float]

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.values.items() if n == name)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in self.values.items():
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.values)


def parse(text: str) -> Snapshot:
    values: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Snapshot(values)


def scrape(client: httpx.Client) -> Snapshot:
    response = client.get("/metrics")
    response.raise_for_status()
    return parse(response.text)


def settled(client: httpx.Client, timeout_s: float = 10.0) -> Snapshot:
    """The snapshot once nothing runs or waits and the finished count stopped moving (vLLM
    records a request's stats a moment after its last byte reaches the client)."""
    deadline = time.monotonic() + timeout_s
    previous = scrape(client)
    while True:
        time.sleep(0.25)
        current = scrape(client)
        idle = current.total(RUNNING) == 0 and current.total(WAITING) == 0
        if (idle and current.total(SUCCESS) == previous.total(SUCCESS)) or time.monotonic() > deadline:
            return current
        previous = current


@dataclass
class Sampler:
    """Polls /metrics in a thread during a run: the peaks of waiting/running requests and KV use."""

    client: httpx.Client
    period_s: float = 0.2
    peaks: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "Sampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                snapshot = scrape(self.client)
            except httpx.HTTPError:
                continue
            for name in (WAITING, RUNNING, KV_USAGE):
                if snapshot.has(name):
                    self.peaks[name] = max(self.peaks.get(name, 0.0), snapshot.total(name))


def server_deltas(before: Snapshot, after: Snapshot) -> dict[str, object]:
    """What the server counted during the run (counters as after - before)."""
    delta = lambda name: after.total(name) - before.total(name)  # noqa: E731
    queued = delta(QUEUE_COUNT)
    out: dict[str, object] = {
        "requests_finished": delta(SUCCESS), "prompt_tokens": delta(PROMPT_TOKENS),
        "generation_tokens": delta(GENERATION_TOKENS), "preemptions": delta(PREEMPTIONS),
        "mean_queue_time_ms": 1000 * delta(QUEUE_SUM) / queued if queued else 0.0,
        "kv_cache_usage_after": after.total(KV_USAGE),
    }
    if after.has(STEER_REQUESTS):
        statuses = after.by_label(STEER_REQUESTS, "status")
        earlier = before.by_label(STEER_REQUESTS, "status")
        out["steer_serve_requests_by_status"] = {s: v - earlier.get(s, 0.0) for s, v in statuses.items()
                                                 if v - earlier.get(s, 0.0)}
        out["steer_serve_generation_tokens"] = delta(STEER_TOKENS)
        out["steer_serve_rejections"] = delta(STEER_REJECTIONS)
    return out
