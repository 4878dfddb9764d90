"""The observer's bookkeeping and in-graph writes, driven step by step as the runner would."""

from __future__ import annotations

import numpy as np
import torch

from steer_serve.request import observe_wire
from steer_serve.request.observe_spec import Capture, Probe, ResolvedObservation
from steer_serve_vllm.engine.observe_budget import ObserveBudget, observe_budget
from steer_serve_vllm.engine.observer import Observer

L, D = 3, 8


def _observer(max_reqs: int = 4, budget: ObserveBudget | None = None) -> Observer:
    return Observer(L, D, max_reqs=max_reqs, max_tokens=32, max_len=64, device=torch.device("cpu"),
                    budget=budget or observe_budget(D, 64, 1.0))


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


def _payload(observation: ResolvedObservation, observation_id: str = "obs-a") -> str:
    return observe_wire.encode(observation_id, observation)


def _run(observer: Observer, steps: list[tuple[list[str], list[int], list[int]]], streams: dict) -> None:
    """Each step: req_ids, tokens scheduled, tokens computed before; streams[(req, pos, layer)] = [D]."""
    for req_ids, scheduled, computed in steps:
        observer.prepare_step(req_ids, np.array(scheduled), np.array(computed))
        for layer in range(L):
            rows = [streams[(r, c + k, layer)] for r, n, c in zip(req_ids, scheduled, computed) for k in range(n)]
            observer.observe(layer, torch.tensor(np.stack(rows)))


def _streams(req_ids: list[str], length: int) -> dict:
    rng = np.random.default_rng(1)
    return {(r, p, layer): rng.standard_normal(D).astype(np.float32)
            for r in req_ids for p in range(length) for layer in range(L)}


def test_probe_values_and_captures_survive_chunking_and_mixed_batches() -> None:
    observer = _observer()
    direction = _unit(0)
    observation = ResolvedObservation((Probe("p", 1, direction, cosine=True),), Capture((0, 2), "last"))
    observer.add_request("a", _payload(observation), num_prompt=5, max_tokens=3)
    streams = _streams(["a", "b"], 8)
    # a: prompt in chunks 3 + 2 next to unobserved b, then two decode steps (positions 5, 6)
    _run(observer, [(["b", "a"], [4, 3], [0, 0]), (["a", "b"], [2, 1], [3, 4]), (["a"], [1], [5]), (["a"], [1], [6])],
         streams)
    assert observer.take("obs-a") == {"status": "live"}
    observer.remove_request("a")
    result = observer.take("obs-a")
    assert observer.take("obs-a") is None and observer.num_live == 0 and observer.num_held == 0
    response = observe_wire.response_object(result)
    assert response["positions"] == list(range(7)) and response["num_prompt_tokens"] == 5
    expected = [float(streams[("a", p, 1)] @ direction) for p in range(7)]
    np.testing.assert_allclose(response["probes"][0]["projection"], expected, atol=1e-5)
    cosine = [e / np.linalg.norm(streams[("a", p, 1)]) for p, e in enumerate(expected)]
    np.testing.assert_allclose(response["probes"][0]["cosine"], cosine, atol=1e-5)
    for entry, layer in zip(response["capture"], (0, 2)):
        assert entry["positions"] == [4] and entry["shape"] == [1, D] and not entry["truncated"]
        np.testing.assert_allclose(observe_wire.unpack(entry["data"]).reshape(1, D), [streams[("a", 4, layer)]])


def test_recomputation_after_preemption_overwrites_with_the_same_values() -> None:
    observer = _observer()
    observation = ResolvedObservation((Probe("p", 2, _unit(3)),), Capture((1,), (0, 2)))
    observer.add_request("a", _payload(observation), num_prompt=3, max_tokens=2)
    streams = _streams(["a"], 5)
    _run(observer, [(["a"], [3], [0]), (["a"], [1], [3]), (["a"], [4], [0])], streams)  # preempted, recomputed
    observer.remove_request("a")
    response = observe_wire.response_object(observer.take("obs-a"))
    np.testing.assert_allclose(response["probes"][0]["projection"],
                               [streams[("a", p, 2)] @ _unit(3) for p in range(4)], atol=1e-5)
    data = observe_wire.unpack(response["capture"][0]["data"]).reshape(2, D)
    np.testing.assert_allclose(data, [streams[("a", 0, 1)], streams[("a", 2, 1)]])


def test_lanes_are_reused_without_stale_values_and_held_results_are_bounded() -> None:
    observer = _observer()
    observer.max_held = 2
    streams = _streams([f"r{i}" for i in range(4)], 4)
    for i in range(4):
        observation = ResolvedObservation((Probe("p", 0, _unit(i)),))
        observer.add_request(f"r{i}", _payload(observation, f"o{i}"), num_prompt=2, max_tokens=None)
        _run(observer, [([f"r{i}"], [2], [0])], streams)
        observer.remove_request(f"r{i}")
    assert observer.num_held == 2 and observer.take("o0") is None and observer.lanes.num_live == 0
    response = observe_wire.response_object(observer.take("o3"))
    np.testing.assert_allclose(response["probes"][0]["projection"],
                               [streams[("r3", p, 0)] @ _unit(3) for p in range(2)], atol=1e-5)


def test_no_free_lane_is_an_explicit_error_not_a_crash() -> None:
    observer = _observer(max_reqs=1)
    observation = ResolvedObservation((Probe("p", 0, _unit(0)),))
    observer.add_request("a", _payload(observation, "o1"), num_prompt=2, max_tokens=4)
    observer.add_request("b", _payload(observation, "o2"), num_prompt=2, max_tokens=4)
    assert "lanes were taken" in observe_wire.response_object(observer.take("o2"))["error"]
    assert observer.num_live == 1


def test_store_rows_follow_what_requests_reach_and_come_back() -> None:
    observer = _observer(budget=ObserveBudget(probe_positions=20, capture_vectors=6))
    probes = (Probe("p", 0, _unit(0)), Probe("q", 2, _unit(1)))
    observer.add_request("a", _payload(ResolvedObservation(probes, Capture((0, 1), "last")), "oa"), 5, max_tokens=7)
    observer.add_request("b", _payload(ResolvedObservation((), Capture((1, 2), "all")), "ob"), 2, max_tokens=1)
    stats = observer.stats()
    # a: 5 + 7 positions (one row each for all its probes), 2 layers x 1 position; b: "all" reaches
    # prompt + max_tokens = 3 positions at 2 layers = 6 vectors, more than the 4 left: refused, explicitly
    assert (stats["probe_positions_in_use"], stats["capture_vectors_in_use"]) == (12, 2)
    assert "observation memory is full" in observe_wire.response_object(observer.take("ob"))["error"]
    observer.add_request("c", _payload(ResolvedObservation((probes[0],)), "oc"), 4, max_tokens=4)  # 8 more: exactly full
    assert observer.stats()["probe_positions_in_use"] == 20
    observer.add_request("d", _payload(ResolvedObservation((probes[0],)), "od"), 1, max_tokens=1)
    assert "2 probe positions" in observe_wire.response_object(observer.take("od"))["error"]
    streams = _streams(["a", "c"], 12)
    _run(observer, [(["c", "a"], [4, 5], [0, 0]), (["a", "c"], [1, 1], [5, 4])], streams)
    for req in ("a", "c"):
        observer.remove_request(req)
    assert {k: v for k, v in observer.stats().items() if k.endswith("in_use")} == {
        "probe_positions_in_use": 0, "capture_vectors_in_use": 0}
    a = observe_wire.response_object(observer.take("oa"))
    for probe, layer, seed in zip(a["probes"], (0, 2), (0, 1)):
        np.testing.assert_allclose(probe["projection"], [streams[("a", p, layer)] @ _unit(seed) for p in range(6)],
                                   atol=1e-5)
    c = observe_wire.response_object(observer.take("oc"))
    np.testing.assert_allclose(c["probes"][0]["projection"], [streams[("c", p, 0)] @ _unit(0) for p in range(5)],
                               atol=1e-5)


def test_budget_formula_and_its_floors() -> None:
    assert observe_budget(576, 1024, 64.0) == ObserveBudget(probe_positions=524288, capture_vectors=14563)
    assert observe_budget(4096, 32768, 1.0) == ObserveBudget(probe_positions=32768, capture_vectors=256)


def test_eager_hooks_learn_which_layers_the_step_reads() -> None:
    observer = _observer()
    observation = ResolvedObservation((Probe("p", 1, _unit(0)),), Capture((2,), "last"))
    observer.add_request("a", _payload(observation), num_prompt=3, max_tokens=2)
    observer.prepare_step(["b", "a"], np.array([2, 3]), np.array([0, 0]))
    assert observer.layers_in_step == {1, 2}
    observer.prepare_step(["b"], np.array([1]), np.array([2]))
    assert observer.layers_in_step == frozenset()
