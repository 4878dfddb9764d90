"""Pipeline stages' observation answers merge into one result: each probe and capture layer comes
from the stage that owns it; a layer nobody owns is an explicit error; fetches poll until no stage
still runs the request and keep the parts already handed over."""

from __future__ import annotations

import asyncio

import numpy as np

from steer_serve.request import observe_wire
from steer_serve_vllm.api.observe_merge import merge_stages
from steer_serve_vllm.api.observe_fetch import ObservationFetcher


def _stage(pp_rank: int, owned: list[int], value: float) -> dict:
    """A stage's answer for probes at layers 1 and 3 and capture at layers 3 and 0; values it does
    not own are zero, as the worker's buffers are."""
    def probe(name: str, layer: int) -> dict:
        filled = value if layer in owned else 0.0
        return {"name": name, "layer": layer, "cosine": False, "report": True,
                "projection": observe_wire.pack(np.full(3, filled)), "norm": observe_wire.pack(np.ones(3))}

    def capture(layer: int) -> dict:
        return {"layer": layer, "positions": [2], "truncated": False,
                "data": observe_wire.pack(np.full((1, 2), value if layer in owned else 0.0))}

    return {"status": "done", "num_prompt_tokens": 2, "first_position": 0, "num_computed_tokens": 3,
            "hidden_size": 2, "probes": [probe("a", 1), probe("b", 3)], "capture": [capture(3), capture(0)],
            "pp_rank": pp_rank, "owned_layers": owned}


def _values(merged: dict) -> tuple[list[float], list[float]]:
    probes = [float(observe_wire.unpack(p["projection"])[0]) for p in merged["probes"]]
    captures = [float(observe_wire.unpack(c["data"])[0]) for c in merged["capture"]]
    return probes, captures


def test_each_layer_comes_from_its_stage_in_request_order() -> None:
    for answers in ([_stage(0, [0, 1], 5.0), _stage(1, [2, 3], 7.0)], [_stage(1, [2, 3], 7.0), _stage(0, [0, 1], 5.0)]):
        merged = merge_stages(answers)
        assert _values(merged) == ([5.0, 7.0], [7.0, 5.0])
        assert [p["name"] for p in merged["probes"]] == ["a", "b"] and [c["layer"] for c in merged["capture"]] == [3, 0]
        assert "pp_rank" not in merged and "owned_layers" not in merged
        assert observe_wire.response_object(merged)["probes"][1]["projection"] == [7.0, 7.0, 7.0]


def test_a_layer_no_answering_stage_owns_is_an_error_not_zeros() -> None:
    merged = merge_stages([_stage(0, [0, 1], 5.0)])
    assert merged["status"] == "done" and "[3]" in merged["error"] and "stages [0]" in merged["error"]
    assert observe_wire.response_object(merged) == {"error": merged["error"]}


def test_single_worker_result_passes_unchanged_and_errors_win() -> None:
    whole = {k: v for k, v in _stage(0, [], 1.0).items() if k not in ("pp_rank", "owned_layers")}
    assert merge_stages([whole]) is whole
    error = {"status": "done", "error": "all 4 observation lanes were taken", "pp_rank": 1}
    assert merge_stages([_stage(0, [0, 1], 5.0), error]) == {"status": "done", "error": error["error"]}


class _Engine:
    """Answers collective_rpc polls from a script: per poll, per worker {observation id: answer} or None."""

    def __init__(self, polls: list[list]) -> None:
        self.polls = polls
        self.asked: list[list[str]] = []
        self.engine_core = self

    async def call_utility_all_async(self, method: str, method_name: str, timeout: float, args: tuple, kwargs) -> list:
        self.asked.append(list(args[0]))
        return [[None if answers is None else {"pp_rank": rank, "owned_layers": [2 * rank, 2 * rank + 1],
                                               "results": answers}
                 for rank, answers in enumerate(self.polls.pop(0))]]


def _fetch_all(engine: _Engine, ids: list[str]) -> list:
    async def main() -> list:
        fetcher = ObservationFetcher(engine)
        return await asyncio.gather(*(fetcher.fetch(oid) for oid in ids))

    return asyncio.run(main())


def _part(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in ("pp_rank", "owned_layers")}


def test_one_rpc_per_poll_for_every_waiting_request_and_later_stages_are_waited_for() -> None:
    stage0, stage1 = _part(_stage(0, [0, 1], 5.0)), _part(_stage(1, [2, 3], 7.0))
    live = {"status": "live"}
    engine = _Engine([
        [{"a": stage0, "b": live}, {"a": live, "b": live}],  # a: stage 0 done, stage 1 not yet
        [{"b": stage0}, {"a": stage1, "b": live}],  # a complete; b waits for stage 1
        [{}, {"b": stage1}],
    ])
    a, b, unknown = _fetch_all(engine, ["a", "b", "c"])
    assert engine.polls == [] and engine.asked == [["a", "b", "c"], ["a", "b"], ["b"]]
    assert _values(a) == _values(b) == ([5.0, 7.0], [7.0, 5.0]) and unknown is None


def test_a_failed_rpc_settles_every_waiting_fetch_with_the_error() -> None:
    class Broken(_Engine):
        async def call_utility_all_async(self, *args) -> list:
            raise RuntimeError("EngineCore encountered an issue")

    async def main() -> list:
        fetcher = ObservationFetcher(Broken([]))
        return await asyncio.gather(*(fetcher.fetch(oid) for oid in "ab"), return_exceptions=True)

    assert [str(e) for e in asyncio.run(main())] == ["EngineCore encountered an issue"] * 2
