"""The load-test workloads' request bodies: the `observe` field of the observe-cost section is one
the server accepts for the default model (resolved by the server's own spec), on every request."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtests import workloads as wl
from loadtests.plan import observe_section
from steer_serve.model_shape import ModelShape
from steer_serve.request.observe_spec import ObserveResolver, parse_observe

DEFAULT = wl.ModelSpec("default", 576, 30)


def _resolve(observe: dict):
    shape = ModelShape(model_id="default", hidden_size=DEFAULT.hidden_size, num_layers=DEFAULT.num_layers)
    return ObserveResolver(shape, library=None).resolve(parse_observe(observe), max_tokens=128)


def test_probe_and_capture_workloads_resolve_for_the_default_model() -> None:
    probes = _resolve(wl.probes(DEFAULT, 2)(0))
    assert [p.layer for p in probes.probes] == [10, 20] and probes.capture is None
    assert all(abs(np.linalg.norm(p.direction) - 1.0) < 1e-5 for p in probes.probes)
    capture = _resolve(wl.capture_last(DEFAULT, 4)(3))
    assert capture.probes == () and capture.capture.layers == (6, 12, 18, 24)
    assert capture.capture.positions == "last"


def test_observe_rides_on_every_request_beside_steering() -> None:
    observe = wl.probes(DEFAULT, 2)
    requests = wl.build_requests(wl.mixed(wl.distinct_vectors(DEFAULT, 2, 1)), 4, 8, 4, observe_for=observe)
    assert all(r.overrides["observe"] == observe(0) for r in requests)
    assert ["steering" in r.overrides for r in requests] == [True, False, True, False]
    assert all(r.overrides is None for r in wl.build_requests(wl.unsteered, 3, 8, 4))


def test_observe_section_measures_each_observe_load_against_plain_vllm() -> None:
    (table,) = observe_section(Path("/m"), quick=False).tables
    names = {v.name: v for v in table.variants}
    assert [table.baseline_of(v) for v in table.variants] == ["plain-vllm"] * 4
    assert not names["plain-vllm"].plugin and names["plain-vllm"].observe(0) is None
    assert names["probes-2"].observe(7)["probes"] and names["capture-last-4L"].observe(7)["capture"]
    assert (table.concurrency, table.num_requests, table.output_len) == (32, 64, 64)


def test_sae_clamp_section_resolves_8_clamps_at_one_layer_with_k_8(tmp_path) -> None:
    """The benchmark's requests are valid on the server it starts (--steering-projections 8, the
    shipped SAE's weights as a standard SAE) and would be refused with the default K = 2."""
    import pytest

    from loadtests.compare import BENCH_SAE, bench_sae_args
    from loadtests.plan import SAE_CLAMP_FEATURES, sae_clamp_section
    from steer_serve.library.sae_library import SAELibrary
    from steer_serve.library.vector_library import VectorLibrary
    from steer_serve.request.errors import SteeringError
    from steer_serve.request.steering_resolver import SteeringResolver
    from steer_serve.request.steering_spec import SteeringSpec
    from steer_serve.settings import Settings

    sae_args = bench_sae_args(tmp_path)
    section = sae_clamp_section(Path("/m"), quick=False, sae_args=sae_args, sae=BENCH_SAE)
    assert section.plugin_args[-2:] == ("--steering-projections", "8")
    (table,) = section.tables
    clamp = next(v for v in table.variants if v.name == "sae-clamp-8-distinct-32")
    settings = Settings(vector_dir=tmp_path, sae_dir=Path(sae_args[1]))
    resolved = {}
    for k in (8, 2):
        shape = ModelShape("default", DEFAULT.hidden_size, DEFAULT.num_layers, projections_per_layer=k)
        saes = SAELibrary(settings.sae_dir, shape, poll_s=0)
        resolver = SteeringResolver(shape, VectorLibrary.load_dir(tmp_path, shape), settings, saes=saes)
        spec = SteeringSpec.model_validate(clamp.steering(5))
        if k == 2:
            with pytest.raises(SteeringError, match="--steering-projections"):
                resolver.resolve(spec)
        else:
            resolved = resolver.resolve(spec)
    assert len(resolved.projections) == len(SAE_CLAMP_FEATURES) and {p.layer for p in resolved.projections} == {10}
    assert len({clamp.steering(i)["interventions"][0]["clamp"] for i in range(64)}) == 32
