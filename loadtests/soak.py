"""Soak test: steady mixed traffic against one server for N minutes, watching for leaks and errors.

    .venv/bin/python -m loadtests.soak --minutes 10 --out docs/reliability/soak

It measures leaks and errors, not speed. One steer-serve server (tiny random Llama; compiled,
vLLM's default mode, unless --eager) gets `--concurrency` clients that loop over a mix of
unsteered, shared-vector, distinct inline vectors, ablate and heads requests, streaming and not;
every tenth streaming request hangs up after a few chunks. Every `--sample-s` seconds it records
the RSS of the API server and of each engine process, the engine's steering stats
(`GET /v1/steering/engine`), and request counts by status. The run passes when:
  * no request failed (every answered request is a 200; client hang-ups are counted apart),
  * total RSS grew by less than MEMORY_BOUND_MIB from the end of warm-up to the end,
  * after traffic stops the engine holds 0 live steered requests and 0 live configurations.
Writes report.json, report.md and soak.png into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil


from loadtests.workloads import unit_vector
from steer_serve.engine_stats import EngineSteeringStats

MEMORY_BOUND_MIB = 64.0  # allowed total RSS growth after warm-up (API + engine processes)
WARMUP_FRACTION = 0.2  # by default the first 20% of the run is warm-up (allocator, KV blocks first touched)
DRAIN_TIMEOUT_S = 30.0  # how long live counts may take to reach 0 after the last request
# A small KV cache: vLLM's CPU KV cache is first touched block by block as the free list cycles,
# which alone grows the worker's RSS for minutes with the tests' 1 GiB; 256 blocks are all
# touched during warm-up, so later growth means a leak.
KV_BLOCKS = 256
ADMIN_KEY = "soak-admin-key"
KINDS = ("unsteered", "shared", "inline", "ablate", "heads")


@dataclass(frozen=True)
class Target:
    """The server under test: where it listens and which process tree it is."""

    url: str
    model: str
    api_pid: int
    admin_key: str
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)  # HTTP status (as str) -> count
    by_kind: Counter = field(default_factory=Counter)
    disconnects: int = 0
    transport_errors: Counter = field(default_factory=Counter)  # exception class -> count


def steering_for(kind: str, i: int, target: Target) -> dict | None:
    """Request i's steering: the shared vector has one fingerprint; inline ones are all distinct."""
    middle = [target.num_layers // 2 - 1, target.num_layers // 2]
    if kind == "unsteered":
        return None
    if kind == "shared":
        vector = unit_vector(target.hidden_size, 0)
        return {"interventions": [{"type": "add", "vector": vector, "layers": middle, "scale": 2.0}]}
    if kind == "inline":
        vector = unit_vector(target.hidden_size, 1000 + i)
        return {"interventions": [{"type": "add", "vector": vector, "layers": middle, "scale": 2.0}]}
    if kind == "ablate":
        return {"interventions": [{"type": "ablate", "vector": unit_vector(target.hidden_size, 7), "layers": middle}]}
    return {"interventions": [{"type": "heads", "mask": {str(middle[0]): [0]}, "scale": {str(middle[1]): {"1": 0.5}}}]}


def request_body(target: Target, kind: str, i: int, stream: bool) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    prompt = rng.integers(100, 40000, size=int(rng.integers(4, 48))).tolist()
    body: dict[str, Any] = {"model": target.model, "prompt": prompt, "max_tokens": int(rng.integers(4, 32)),
                            "temperature": 0.0, "stream": stream}
    steering = steering_for(kind, i, target)
    if steering is not None:
        body["steering"] = steering
    return body


async def one_request(client: httpx.AsyncClient, target: Target, i: int, tally: Tally) -> None:
    kind = KINDS[(i // 2) % len(KINDS)]  # every (kind, stream) pair in each block of 10 requests
    stream = i % 2 == 1
    hang_up = stream and (i // 10) % 10 == 0  # one streaming request in ten leaves after a few chunks
    body = request_body(target, kind, i, stream)
    tally.by_kind[kind] += 1
    try:
        if not stream:
            response = await client.post("/v1/completions", json=body)
            tally.statuses[str(response.status_code)] += 1
            return
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                tally.statuses[str(response.status_code)] += 1
                return
            chunks = 0
            async for _ in response.aiter_lines():
                chunks += 1
                if hang_up and chunks >= 3:
                    tally.disconnects += 1  # leaving the block closes the unread response's connection
                    return
            tally.statuses["200"] += 1
    except httpx.HTTPError as exc:
        tally.transport_errors[type(exc).__name__] += 1


async def client_loop(target: Target, counter: itertools.count, deadline: float, tally: Tally) -> None:
    async with httpx.AsyncClient(base_url=target.url, timeout=120) as client:
        while time.monotonic() < deadline:
            await one_request(client, target, next(counter), tally)


def process_rss(api_pid: int) -> dict[str, float]:
    """RSS in MiB of the API server and each of its vLLM children (EngineCore, Worker)."""
    api = psutil.Process(api_pid)
    rss = {"api": api.memory_info().rss / 2**20}
    for child in api.children(recursive=True):
        try:
            name = child.name()
            if name.startswith("VLLM::"):
                role = name.removeprefix("VLLM::")
                rss[role] = rss.get(role, 0.0) + child.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return rss


async def engine_stats(client: httpx.AsyncClient, target: Target) -> EngineSteeringStats:
    response = await client.get("/v1/steering/engine", headers={"Authorization": f"Bearer {target.admin_key}"})
    response.raise_for_status()
    return EngineSteeringStats.model_validate(response.json())


async def sample(client: httpx.AsyncClient, target: Target, started: float, tally: Tally) -> dict[str, Any]:
    stats = await engine_stats(client, target)
    rss = process_rss(target.api_pid)
    return {
        "t_s": round(time.monotonic() - started, 1), "rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "rss_total_mib": round(sum(rss.values()), 1),
        "live_requests": stats.live_requests, "live_configurations": stats.live_configurations,
        "resident_slots": max((w.resident_slots for w in stats.workers), default=0),
        "requests": sum(tally.statuses.values()) + tally.disconnects, "statuses": dict(tally.statuses),
    }


async def sampler(target: Target, started: float, deadline: float, every_s: float, tally: Tally,
                  samples: list[dict]) -> None:
    async with httpx.AsyncClient(base_url=target.url, timeout=60) as client:
        while time.monotonic() < deadline:
            samples.append(await sample(client, target, started, tally))
            await asyncio.sleep(min(every_s, max(0.0, deadline - time.monotonic())))


async def drain(target: Target, started: float, tally: Tally) -> tuple[dict[str, Any], float]:
    """Poll the engine until it holds no steered request (or DRAIN_TIMEOUT_S); return the last sample."""
    stopped = time.monotonic()
    async with httpx.AsyncClient(base_url=target.url, timeout=60) as client:
        while True:
            last = await sample(client, target, started, tally)
            idle = last["live_requests"] == 0 and last["live_configurations"] == 0
            if idle or time.monotonic() - stopped > DRAIN_TIMEOUT_S:
                return last, time.monotonic() - stopped
            await asyncio.sleep(0.5)


async def soak(target: Target, duration_s: float, concurrency: int, sample_s: float,
               warmup_s: float | None = None) -> dict[str, Any]:
    """Run the traffic and the sampler; return the report (criteria included)."""
    warmup_s = WARMUP_FRACTION * duration_s if warmup_s is None else warmup_s
    tally, samples = Tally(), []
    started = time.monotonic()
    deadline = started + duration_s
    counter = itertools.count()
    await asyncio.gather(sampler(target, started, deadline, sample_s, tally, samples),
                         *(client_loop(target, counter, deadline, tally) for _ in range(concurrency)))
    final, drain_s = await drain(target, started, tally)
    samples.append(final)
    return {"duration_s": duration_s, "concurrency": concurrency, "sample_s": sample_s, "warmup_s": warmup_s,
            "requests": final["requests"], "statuses": dict(tally.statuses), "by_kind": dict(tally.by_kind),
            "disconnects": tally.disconnects, "transport_errors": dict(tally.transport_errors),
            "drain_s": round(drain_s, 2), "samples": samples, "criteria": criteria(samples, tally, warmup_s)}


def criteria(samples: list[dict], tally: Tally, warmup_s: float) -> dict[str, dict[str, Any]]:
    """Each pass criterion with its measured value; the last sample is the one after traffic stopped.
    Memory growth: the peak of total RSS after the first sample at or past warm-up, minus that sample."""
    final = samples[-1]
    warm_index = next((i for i, s in enumerate(samples) if s["t_s"] >= warmup_s), len(samples) - 1)
    warm = samples[warm_index]
    growth = max(s["rss_total_mib"] for s in samples[warm_index:]) - warm["rss_total_mib"]
    failures = {s: n for s, n in tally.statuses.items() if s != "200"}
    return {
        "no_errors": {"pass": not failures and not tally.transport_errors,
                      "value": {"non_200": failures, "transport_errors": dict(tally.transport_errors)}},
        "memory_growth_after_warmup": {"pass": growth < MEMORY_BOUND_MIB, "value_mib": round(growth, 1),
                                       "bound_mib": MEMORY_BOUND_MIB, "warmup_end_s": warm["t_s"]},
        "idle_after_traffic": {"pass": final["live_requests"] == 0 and final["live_configurations"] == 0,
                               "live_requests": final["live_requests"],
                               "live_configurations": final["live_configurations"]},
    }


def passed(report: dict[str, Any]) -> bool:
    return all(c["pass"] for c in report["criteria"].values())


def write_report(report: dict[str, Any], out: Path) -> Path:
    """report.json, report.md and soak.png (memory and slots over time) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report["samples"], out / "soak.png")
    (out / "report.md").write_text(_markdown(report))
    return out / "report.md"


def _markdown(report: dict[str, Any]) -> str:
    first, last = report["samples"][0], report["samples"][-1]
    lines = [f"# Soak: {'PASS' if passed(report) else 'FAIL'}", "",
             f"{report.get('setup', '')}", "",
             f"- duration {report['duration_s'] / 60:.1f} min, concurrency {report['concurrency']}, "
             f"sample every {report['sample_s']} s",
             f"- requests {report['requests']} (by kind {report['by_kind']}), statuses {report['statuses']}, "
             f"client hang-ups {report['disconnects']}, transport errors {report['transport_errors'] or 'none'}",
             f"- total RSS {first['rss_total_mib']} MiB at start, {last['rss_total_mib']} MiB after traffic "
             f"(by process at the end: {last['rss_mib']})",
             f"- after traffic stopped: {last['live_requests']} live requests, {last['live_configurations']} live "
             f"configurations, {last['resident_slots']} resident slots (reached in {report['drain_s']} s)", "",
             "| criterion | pass | measured |", "|---|---|---|"]
    for name, result in report["criteria"].items():
        measured = {k: v for k, v in result.items() if k != "pass"}
        lines.append(f"| {name} | {'yes' if result['pass'] else 'NO'} | {measured} |")
    return "\n".join(lines + ["", "![memory and slots over time](soak.png)", ""])


def _plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in samples]
    fig, (mem, slots) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for process in sorted({p for s in samples for p in s["rss_mib"]}):
        mem.plot(t, [s["rss_mib"].get(process, np.nan) for s in samples], label=process)
    mem.plot(t, [s["rss_total_mib"] for s in samples], label="total", color="black")
    mem.set_ylabel("RSS (MiB)")
    mem.legend(fontsize=8)
    for key in ("live_requests", "live_configurations", "resident_slots"):
        slots.step(t, [s[key] for s in samples], where="post", label=key)
    slots.set_ylabel("engine (worker 0)")
    slots.set_xlabel("seconds (last point: after traffic stopped)")
    slots.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--max-num-seqs", type=int, default=8, help="fewer slots than concurrent requests: they queue")
    parser.add_argument("--eager", action="store_true", help="--enforce-eager (default: compiled, vLLM's default)")
    parser.add_argument("--out", type=Path, default=Path("docs/reliability/soak"))
    args = parser.parse_args()

    from steer_serve.default_model import default_model_dir
    from harness.servers import Server
    from harness.tiny_models import build_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model = build_tiny_llama(work / "tiny-llama", default_model_dir())
    server = Server(model, work, eager=args.eager,
                    extra_args=["--admin-key", ADMIN_KEY, "--max-num-seqs", str(args.max_num_seqs),
                                "--num-gpu-blocks-override", str(KV_BLOCKS)])
    try:
        server.wait_ready()
        target = Target(server.url, server.model, server.process.pid, ADMIN_KEY)
        report = asyncio.run(soak(target, args.minutes * 60, args.concurrency, args.sample_s))
        if server.process.poll() is not None:
            raise RuntimeError(f"server died during the soak:\n{server.log_tail()}")
    finally:
        server.stop()
    report["setup"] = (f"tiny random Llama (hidden 128, 4 layers), {'eager' if args.eager else 'compiled'}, "
                       f"--max-num-seqs {args.max_num_seqs}, {KV_BLOCKS} KV blocks, float32, vLLM CPU; command: "
                       f"`.venv/bin/python -m loadtests.soak {' '.join(sys.argv[1:])}`")
    print(write_report(report, args.out).read_text())
    sys.exit(0 if passed(report) else 1)


if __name__ == "__main__":
    main()
