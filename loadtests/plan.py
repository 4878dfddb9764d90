"""What the standard comparison runs: sections (one server pair each), tables, variants.

A section starts plain vLLM (plugin not loaded) and steer-serve on one model; its tables are
groups of variants measured against a baseline variant of the same table, interleaved and
repeated. A variant's `sweep` places it on a sweep plot (cost vs K, vs steered layers, latency
vs offered load).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from loadtests import workloads as wl


@dataclass(frozen=True)
class Sweep:
    series: str  # one line on the plot
    axis: str  # x-axis label
    x: float


@dataclass(frozen=True)
class Variant:
    name: str
    plugin: bool
    steering: wl.SteeringFor
    rate: float = math.inf  # requests/s: finite = open loop (Poisson arrivals), inf = closed loop
    users: bool = False  # requests carry `user` ids (A/B assignment)
    baseline: str | None = None  # default: the table's first variant
    sweep: Sweep | None = None
    observe: wl.ObserveFor = wl.unobserved  # each request's `observe` field


@dataclass(frozen=True)
class Table:
    name: str
    variants: tuple[Variant, ...]
    concurrency: int | None
    num_requests: int
    input_len: int
    output_len: int

    def baseline_of(self, variant: Variant) -> str:
        return variant.baseline or self.variants[0].name


@dataclass(frozen=True)
class Section:
    name: str
    model_dir: Path
    model: wl.ModelSpec
    tables: tuple[Table, ...]
    server_args: tuple[str, ...] = ()
    plugin_args: tuple[str, ...] = ()  # steer-serve only (e.g. --experiments)
    vocab: int = 49152


def default_model_section(model_dir: Path, quick: bool, experiments_args: tuple[str, ...]) -> Section:
    """SmolLM2-135M: the issue's targets at 32 concurrent requests, A/B traffic, and open loop."""
    model = wl.ModelSpec("default", 576, 30)
    distinct = wl.distinct_vectors(model, 32, 10)
    closed = (
        Variant("plain-vllm", False, wl.unsteered),
        Variant("plugin-unsteered", True, wl.unsteered),
        Variant("shared-vector-10L", True, wl.distinct_vectors(model, 1, 10)),
        Variant("distinct-32-10L", True, distinct),
        Variant("mixed-50-50", True, wl.mixed(distinct)),
        Variant("ab-traffic", True, wl.unsteered, users=True),
    )
    rates = (1.0,) if quick else (1.0, 2.0, 4.0)
    open_loop = []
    for rate in rates:
        plain = f"plain-vllm@{rate:g}rps"
        open_loop += [Variant(plain, False, wl.unsteered, rate=rate, sweep=Sweep("plain-vllm", "offered load (req/s)", rate)),
                      Variant(f"distinct-32-10L@{rate:g}rps", True, distinct, rate=rate, baseline=plain,
                              sweep=Sweep("distinct-32-10L", "offered load (req/s)", rate))]
    tables = (
        Table("default-model", closed, 32, 8 if quick else 64, 64, 8 if quick else 128),
        Table("default-model-open-loop", tuple(open_loop), None, 4 if quick else 24, 64, 8 if quick else 64),
    )
    return Section("default-model", model_dir, model, tables, plugin_args=experiments_args)


def observe_section(model_dir: Path, quick: bool) -> Section:
    """SmolLM2-135M at 32 concurrent requests: what observing every request costs (issue 15's
    targets: 2 probes >= 0.97, capture of the last prompt token at 4 layers >= 0.95 of plain vLLM)."""
    model = wl.ModelSpec("default", 576, 30)
    variants = (
        Variant("plain-vllm", False, wl.unsteered),
        Variant("plugin-unobserved", True, wl.unsteered),
        Variant("probes-2", True, wl.unsteered, observe=wl.probes(model, 2)),
        Variant("capture-last-4L", True, wl.unsteered, observe=wl.capture_last(model, 4)),
    )
    table = Table("observe-cost", variants, 32, 8 if quick else 64, 64, 8 if quick else 64)
    return Section("observe-cost", model_dir, model, (table,))


# Eight features of the shipped SAE (layer 10): the gloomy-side features of its report
SAE_CLAMP_FEATURES = (576, 1070, 66, 1006, 2230, 1954, 1138, 2076)


def sae_clamp_section(model_dir: Path, quick: bool, sae_args: tuple[str, ...], sae: str) -> Section:
    """SmolLM2-135M at 32 concurrent requests: every request clamps 8 SAE features at layer 10
    (issue 14's target: >= 0.95 of plain vLLM); steer-serve runs `--steering-projections 8`."""
    variants = (
        Variant("plain-vllm", False, wl.unsteered),
        Variant("plugin-unsteered", True, wl.unsteered),
        Variant("sae-clamp-8-distinct-32", True, wl.sae_clamps(sae, SAE_CLAMP_FEATURES, 32)),
    )
    table = Table("sae-clamp-cost", variants, 32, 8 if quick else 64, 64, 8 if quick else 64)
    return Section("sae-clamp-cost", model_dir, wl.ModelSpec("default", 576, 30), (table,),
                   plugin_args=(*sae_args, "--steering-projections", str(len(SAE_CLAMP_FEATURES))))


def overhead_section(tiny_dir: Path, quick: bool) -> Section:
    """A 4-layer hidden-128 Llama at 64 concurrent requests: per-step engine work dominates."""
    model = wl.ModelSpec("tiny", 128, 4)
    variants = [Variant("plain-vllm", False, wl.unsteered), Variant("plugin-unsteered", True, wl.unsteered)]
    variants += [Variant(f"distinct-{k}-4L", True, wl.distinct_vectors(model, k, 4),
                         sweep=Sweep("all 4 layers", "distinct vectors K", k)) for k in (1, 8, 32, 64)]
    variants += [Variant(f"distinct-64-{n}L", True, wl.distinct_vectors(model, 64, n),
                         sweep=Sweep("K = 64", "steered layers", n)) for n in (1, 2)]
    table = Table("overhead-bound-tiny", tuple(variants), 64, 8 if quick else 256, 32, 8 if quick else 128)
    return Section("overhead-bound-tiny", tiny_dir, model, (table,), server_args=("--max-num-seqs", "64"))


def moe_section(moe_dir: Path, quick: bool) -> Section:
    """A tiny Mixtral (4 experts, top-2): expert masks and forced experts per request."""
    model = wl.ModelSpec("tiny-moe", 128, 4)
    variants = (
        Variant("plain-vllm", False, wl.unsteered),
        Variant("plugin-unsteered", True, wl.unsteered),
        Variant("experts-disable-4-masks", True, wl.experts_mask(4)),
        Variant("experts-force-4-masks", True, wl.experts_force(4)),
        Variant("add-distinct-64-4L", True, wl.distinct_vectors(model, 64, 4)),
    )
    table = Table("moe-experts-tiny", variants, 64, 8 if quick else 256, 32, 8 if quick else 128)
    return Section("moe-experts-tiny", moe_dir, model, (table,), server_args=("--max-num-seqs", "64"))
