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
