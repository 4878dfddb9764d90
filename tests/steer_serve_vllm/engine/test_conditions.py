"""The engine's CAST state (engine/conditions.py) on CPU tensors, driven as the runner drives it:
the decision equals IBM's formula on the prompt's mean (or last) hidden state computed directly in
numpy, whatever the prefill chunking, is held for the rest of the request, and gates only the
request's own gated layers. (Compiled: tests/e2e/test_conditional_steering.py, in vLLM's own graph.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steer_serve.request.resolved_steering import Condition
from steer_serve_vllm.engine.conditions import ConditionState

D, LAYERS, COND_LAYER = 16, 4, 1


def ibm_met(hidden: np.ndarray, v: np.ndarray, threshold: float, above: bool, compare: str) -> bool:
    h = hidden.mean(axis=0) if compare == "mean" else hidden[-1]
    projected = np.tanh((np.outer(v, v) / np.dot(v, v)) @ h)
    sim = np.dot(h, projected) / (np.linalg.norm(h) * np.linalg.norm(projected))
    return bool(sim > threshold) if above else bool(sim < threshold)


def ibm_similarity(hidden: np.ndarray, v: np.ndarray, compare: str) -> float:
    h = hidden.mean(axis=0) if compare == "mean" else hidden[-1]
    projected = np.tanh((np.outer(v, v) / np.dot(v, v)) @ h)
    return float(np.dot(h, projected) / (np.linalg.norm(h) * np.linalg.norm(projected)))


def _condition(v: np.ndarray, threshold: float, above: bool = True, compare: str = "mean") -> Condition:
    return Condition(COND_LAYER, (v / np.linalg.norm(v)).astype(np.float32), threshold, above, compare, (1, 3))


def _run(state: ConditionState, prompts: dict[str, np.ndarray], chunk: int, observe) -> None:
    """Prefill every prompt in chunks of `chunk` tokens, all requests in each step, then one decode step."""
    done = {r: 0 for r in prompts}
    while any(done[r] < len(p) for r, p in prompts.items()):
        ids = [r for r in prompts if done[r] < len(prompts[r])]
        sizes = np.array([min(chunk, len(prompts[r]) - done[r]) for r in ids])
        state.prepare_step(ids, sizes, np.array([done[r] for r in ids]), np.array([len(prompts[r]) for r in ids]))
        stream = np.concatenate([prompts[r][done[r]: done[r] + n] for r, n in zip(ids, sizes)])
        observe(torch.from_numpy(stream))
        for r, n in zip(ids, sizes):
            done[r] += n


@pytest.mark.parametrize("chunk, compare", [
    (1, "mean"), (3, "mean"), (100, "mean"), (1, "last"), (3, "last"),
])
def test_decision_equals_ibms_formula_across_prefill_chunks(chunk, compare) -> None:
    rng = np.random.default_rng(chunk)
    v = rng.standard_normal(D)
    prompts = {f"r{i}": (rng.standard_normal((7 + i, D)) + (i % 3) * 0.8 * v).astype(np.float32) for i in range(6)}
    sims = {r: ibm_similarity(p.astype(np.float64), v, compare) for r, p in prompts.items()}
    threshold = float(np.median(list(sims.values())))  # some requests on either side
    state = ConditionState(D, LAYERS, capacity=8, max_tokens=256, device=torch.device("cpu"))
    for i, r in enumerate(prompts):
        state.add_request(r, _condition(v, threshold, above=i % 2 == 0, compare=compare))

    def observe(stream: torch.Tensor) -> torch.Tensor:
        state.observe(COND_LAYER - 1, stream * 100)  # another layer's stream is ignored
        state.observe(COND_LAYER, stream)
        return state.applies(3, stream.shape[0])

    _run(state, prompts, chunk, observe)
    for i, (r, p) in enumerate(prompts.items()):
        lane = state.lanes.lane_of(r)
        assert state.decided[lane] == 1
        assert bool(state.gate[lane]) == ibm_met(p.astype(np.float64), v, threshold, i % 2 == 0, compare), (r, sims[r])
    assert {bool(state.gate[state.lanes.lane_of(r)]) for r in prompts} == {True, False}


def test_decision_is_held_and_gates_only_the_requests_gated_layers() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(D)
    prompt = (rng.standard_normal((5, D)) + 2 * v).astype(np.float32)
    state = ConditionState(D, LAYERS, capacity=4, max_tokens=64, device=torch.device("cpu"))
    state.add_request("met", _condition(v, -1.0))  # cosine > -1: always met
    state.add_request("unmet", _condition(v, 1.0))  # never
    _run(state, {"met": prompt, "unmet": prompt}, 2, lambda s: state.observe(COND_LAYER, s))
    # a decode step with a wildly different token: nothing changes after the decision
    state.prepare_step(["met", "unmet", "plain"], np.array([1, 1, 1]), np.array([5, 5, 5]), np.array([5, 5, 3]))
    state.observe(COND_LAYER, torch.from_numpy(-50 * np.tile(prompt[:1], (3, 1))))
    assert state.gate[state.lanes.lane_of("met")] == 1 and state.gate[state.lanes.lane_of("unmet")] == 0
    assert state.applies(3, 3)[:, 0].tolist() == [True, False, True]  # unconditional "plain": lane 0
    assert state.applies(2, 3)[:, 0].tolist() == [True, True, True]  # layer 2 is not gated
    state.remove_request("met")
    state.add_request("next", _condition(v, 1.0))  # reuses the lane: fresh state
    lane = state.lanes.lane_of("next")
    assert state.decided[lane] == 0 and state.gate[lane] == 0 and state.count[lane] == 0


def test_without_a_free_lane_a_request_fails_closed() -> None:
    """No exception in the worker: the request's residual edits are off (its tokens only)."""
    v = np.ones(D)
    state = ConditionState(D, LAYERS, capacity=1, max_tokens=64, device=torch.device("cpu"))
    state.add_request("first", _condition(v, -1.0))
    state.add_request("second", _condition(v, -1.0))
    state.prepare_step(["first", "second", "plain"], np.array([2, 2, 1]), np.array([0, 0, 4]), np.array([2, 2, 3]))
    state.observe(COND_LAYER, torch.ones(5, D))
    assert state.applies(3, 5)[:, 0].tolist() == [True, True, False, False, True]
    assert state.applies(0, 5)[:, 0].tolist() == [True, True, False, False, True]
    state.remove_request("second")
    state.prepare_step(["plain"], np.array([3]), np.array([5]), np.array([3]))
    assert state.applies(3, 3)[:, 0].tolist() == [True, True, True]


@pytest.mark.parametrize("above", [True, False])
def test_per_token_gate_decides_every_token_by_its_own_state(above) -> None:
    """compare "token": each token (prompt, across chunks, and generated) is gated by IBM's formula on
    its own hidden state at the condition layer; a prompt-level request in the same step is not."""
    rng = np.random.default_rng(7)
    v = rng.standard_normal(D)
    prompt = (rng.standard_normal((9, D)) + rng.choice([-1.5, 1.5], size=(9, 1)) * v).astype(np.float32)
    sims = [ibm_similarity(row[None].astype(np.float64), v, "last") for row in prompt]
    threshold = float(np.mean(sorted(sims)[4:6]))  # between two tokens: none sits on it
    want = [s > threshold if above else s < threshold for s in sims]
    state = ConditionState(D, LAYERS, capacity=4, max_tokens=64, device=torch.device("cpu"))
    state.add_request("tok", _condition(v, threshold, above, compare="token"))
    state.add_request("held", _condition(v, -1.0))  # prompt-level, always met
    got: list[bool] = []

    def observe(stream: torch.Tensor) -> None:
        state.observe(COND_LAYER, stream)
        kept = state.applies(3, stream.shape[0])[:, 0].tolist()
        got.extend(kept[: len(kept) // 2])  # "tok" comes first in every step, same chunk sizes as "held"
        assert state.applies(2, stream.shape[0]).all()  # layer 2 is not gated

    _run(state, {"tok": prompt, "held": prompt}, 4, observe)
    assert got == want and set(want) == {True, False}
    assert state.count[state.lanes.lane_of("tok")] == 0  # nothing accumulated, nothing held
    # a generated token decides for itself too: one far on each side of the threshold
    state.prepare_step(["tok", "held"], np.array([1, 1]), np.array([9, 9]), np.array([9, 9]))
    for row, sim in ((prompt[int(np.argmax(sims))], max(sims)), (prompt[int(np.argmin(sims))], min(sims))):
        state.observe(COND_LAYER, torch.from_numpy(np.stack([row, row])))
        assert state.applies(3, 2)[:, 0].tolist() == [(sim > threshold) == above, True]
