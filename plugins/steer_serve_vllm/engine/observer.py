"""Per-request observation in the worker: probe projections and captured residual vectors.

Legend: L = decoder layers, R = lanes + 1 (row 0 = scratch), P = probe columns per request,
D = hidden size, N = probe-store rows, M = capture-store rows (engine/observe_budget.py: both
sized by --observe-memory, row 0 = scratch), T = tokens in the step.

Each observed request holds a lane (engine/lanes.py) for its probe directions, and rows of two
pooled stores for its results: one probe row per token position it can reach (prompt + max_tokens)
when it has probes, one capture row per vector it asks for. Hooks on every decoder layer output
read the stream after the layer (after steering edits at that layer: they are registered later)
and write, in-graph, into the persistent stores:
- probe_proj / probe_norm [N, P]: <h, unit direction> and |h| at the probe's own layer, in the
  row of the token's position (probe_rows [T]); a probe column only writes at its layer
  (probe_at mask), elsewhere the old value is kept;
- cap_store [M, D]: captured vectors; cap_index [L, T_max] says where token t goes at layer l
  (row 0 for every token not captured there).
Writes are idempotent per (request, position), so recomputation after preemption and chunked
prefill give the same values. When the request leaves the engine (finished or aborted) its rows
are copied to host memory (bounded: at most `max_held` results, oldest dropped with a warning)
and its lane and rows are freed; the API fetches and drops the result by observation id (`take`).
A request that finds no free lane or not enough rows gets an explicit error as its result.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steer_serve.request import observe_wire
from steer_serve.request.observe_spec import CAPTURE_CAP, MAX_PROBES, ResolvedObservation
from steer_serve_vllm.engine.lanes import LaneTable
from steer_serve_vllm.engine.observe_budget import ObserveBudget, RowPool

logger = logging.getLogger(f"vllm.{__name__}")


@dataclass
class _Live:
    observation_id: str
    observation: ResolvedObservation
    lane: int
    num_prompt: int
    probe_rows: np.ndarray  # [positions] the probe-store row of each position (none without probes)
    cap_rows: np.ndarray  # [slots x capture layers] capture-store rows
    first: int | None = None  # first position that went through a forward pass
    end: int = 0  # one past the last such position
    captured: set[int] = field(default_factory=set)  # positions written to the capture store

    @property
    def layers(self) -> set[int]:
        """The layers whose output this request reads (its probes' and captures')."""
        capture = self.observation.capture
        return {p.layer for p in self.observation.probes} | set(capture.layers if capture is not None else ())


class Observer:
    def __init__(self, num_layers: int, hidden: int, max_reqs: int, max_tokens: int, max_len: int,
                 device: torch.device, budget: ObserveBudget, max_held: int | None = None) -> None:
        self.lanes = LaneTable(max_reqs, max_tokens, device)
        R, P, L, D = max_reqs + 1, MAX_PROBES, num_layers, hidden
        self.hidden = hidden
        self.max_len = max_len
        self.probe_pool, self.cap_pool = RowPool(budget.probe_positions), RowPool(budget.capture_vectors)
        self.probe_dir = torch.zeros(R, P, D, device=device, dtype=torch.float32)  # [R, P, D]
        self.probe_at = torch.zeros(L, R, P, device=device, dtype=torch.bool)  # [L, R, P]
        self.probe_proj = torch.zeros(budget.probe_positions + 1, P, device=device, dtype=torch.float32)  # [N, P]
        self.probe_norm = torch.zeros(budget.probe_positions + 1, P, device=device, dtype=torch.float32)  # [N, P]
        self.probe_rows = torch.zeros(max_tokens, device=device, dtype=torch.long)  # [T_max]
        self.cap_store = torch.zeros(budget.capture_vectors + 1, D, device=device, dtype=torch.float32)  # [M, D]
        self.cap_index = torch.zeros(L, max_tokens, device=device, dtype=torch.long)  # [L, T_max]
        self._written = 0  # high-water mark of non-zero columns of probe_rows / cap_index
        self.layers_in_step: frozenset[int] = frozenset()  # layers this step's observed tokens are read at
        self._live: dict[str, _Live] = {}
        self._held: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_held = max_held if max_held is not None else 4 * max_reqs

    @property
    def nbytes(self) -> int:
        tensors = (self.probe_dir, self.probe_at, self.probe_proj, self.probe_norm, self.probe_rows, self.cap_store,
                   self.cap_index, self.lanes.token_lanes, self.lanes.token_positions)
        return sum(t.numel() * t.element_size() for t in tensors)

    def stats(self) -> dict[str, int]:
        """For the engine stats route: memory and store rows (capacity, in use)."""
        return {"observed_requests": self.num_live, "held_observations": self.num_held, "observe_bytes": self.nbytes,
                "probe_positions": self.probe_pool.capacity, "probe_positions_in_use": self.probe_pool.in_use,
                "capture_vectors": self.cap_pool.capacity, "capture_vectors_in_use": self.cap_pool.in_use}

    @property
    def num_live(self) -> int:
        return len(self._live)

    @property
    def num_held(self) -> int:
        return len(self._held)

    # ---- request lifecycle -------------------------------------------------------------
    def add_request(self, req_id: str, payload: str, num_prompt: int, max_tokens: int | None) -> None:
        try:
            observation_id, observation = observe_wire.decode(payload)
        except (ValueError, KeyError, TypeError) as exc:  # only the gateway writes it; never raise here
            logger.error("steer-serve: request %s has an unreadable observe payload (%s)", req_id, exc)
            return
        if req_id in self._live:
            return
        reach = min(num_prompt + (max_tokens if max_tokens is not None else self.max_len), self.max_len)
        refused = self._refusal(observation, reach)  # preempted requests keep theirs: never raise in a worker
        if refused is not None:
            logger.error("steer-serve: request %s not observed: %s", req_id, refused)
            self._hold(observation_id, {"status": "done", "error": f"{refused}; retry the request"})
            return
        live = _Live(observation_id, observation, self.lanes.acquire(req_id), num_prompt,
                     self.probe_pool.take(reach if observation.probes else 0),
                     self.cap_pool.take(_capture_rows(observation, reach)))
        self._load(live)
        self._live[req_id] = live

    def _refusal(self, observation: ResolvedObservation, reach: int) -> str | None:
        """Why the request cannot be observed now (no lane, not enough store rows), or None."""
        if self.lanes.num_live >= self.lanes.capacity:
            return f"all {self.lanes.capacity} observation lanes were taken (preempted requests hold theirs)"
        positions, vectors = reach if observation.probes else 0, _capture_rows(observation, reach)
        free_positions = self.probe_pool.capacity - self.probe_pool.in_use
        free_vectors = self.cap_pool.capacity - self.cap_pool.in_use
        if positions > free_positions or vectors > free_vectors:
            return (f"observation memory is full (--observe-memory): the request needs {positions} probe positions "
                    f"and {vectors} capture vectors, {free_positions} and {free_vectors} are free")
        return None

    def _load(self, live: _Live) -> None:
        lane, P = live.lane, self.probe_at.shape[2]
        self.probe_dir[lane] = 0
        self.probe_at[:, lane] = False
        for k, probe in enumerate(live.observation.probes[:P]):  # the API refuses more than MAX_PROBES
            if 0 <= probe.layer < self.probe_at.shape[0] and probe.direction.shape[0] == self.hidden:
                self.probe_dir[lane, k] = torch.from_numpy(probe.direction).to(self.probe_dir)
                self.probe_at[probe.layer, lane, k] = True
        rows = torch.from_numpy(live.probe_rows).to(self.probe_proj.device)
        self.probe_proj.index_fill_(0, rows, 0.0)
        self.probe_norm.index_fill_(0, rows, 0.0)

    def remove_request(self, req_id: str) -> None:
        """The request left the engine (finished or aborted): keep its result, free its lane and rows."""
        live = self._live.pop(req_id, None)
        if live is None:
            return
        self._hold(live.observation_id, self._result(live))
        self.lanes.release(req_id)
        self.probe_pool.give(live.probe_rows)
        self.cap_pool.give(live.cap_rows)

    def _hold(self, observation_id: str, result: dict[str, Any]) -> None:
        self._held[observation_id] = result
        while len(self._held) > self.max_held:
            dropped, _ = self._held.popitem(last=False)
            logger.warning("steer-serve: observation %s dropped unfetched (more than %d held)", dropped, self.max_held)

    def take(self, observation_id: str) -> dict[str, Any] | None:
        """The finished result (removed), {"status": "live"} while the request runs, None if unknown."""
        result = self._held.pop(observation_id, None)
        if result is not None:
            return result
        if any(live.observation_id == observation_id for live in self._live.values()):
            return {"status": "live"}
        return None

    def _result(self, live: _Live) -> dict[str, Any]:
        first = live.first or 0
        end = min(max(live.end, first), live.probe_rows.shape[0]) if live.observation.probes else max(live.end, first)
        rows = torch.from_numpy(live.probe_rows[:end]).to(self.probe_proj.device)
        proj = self.probe_proj.index_select(0, rows).cpu().numpy()  # [n, P]
        norm = self.probe_norm.index_select(0, rows).cpu().numpy()  # [n, P]
        probes = [{"name": p.name, "layer": p.layer, "cosine": p.cosine, "report": p.report,
                   "projection": observe_wire.pack(proj[:, k]), "norm": observe_wire.pack(norm[:, k])}
                  for k, p in enumerate(live.observation.probes)]
        result: dict[str, Any] = {"status": "done", "num_prompt_tokens": live.num_prompt, "first_position": first,
                                  "num_computed_tokens": end, "hidden_size": self.hidden, "probes": probes,
                                  "capture": None}
        if live.observation.capture is not None:
            result["capture"] = self._captured(live)
        return result

    def _captured(self, live: _Live) -> list[dict[str, Any]]:
        capture = live.observation.capture
        order = self._capture_order(live)
        positions = [p for p in order if p in live.captured]
        n_layers = len(capture.layers)
        entries = []
        for i, layer in enumerate(capture.layers):
            rows = [int(live.cap_rows[order[p] * n_layers + i]) for p in positions]
            data = self.cap_store[rows].cpu().numpy() if rows else np.zeros((0, self.hidden), np.float32)
            entries.append({"layer": layer, "positions": positions, "data": observe_wire.pack(data),
                            "truncated": capture.positions == "all" and live.end > CAPTURE_CAP // n_layers})
        return entries

    @staticmethod
    def _capture_order(live: _Live) -> dict[int, int]:
        """position -> its index among the request's captured positions (its rows in the store)."""
        capture = live.observation.capture
        if capture.positions == "last":
            return {live.num_prompt - 1: 0}
        if capture.positions == "all":
            return {p: p for p in range(live.cap_rows.shape[0] // len(capture.layers))}
        return {p: j for j, p in enumerate(capture.positions)}

    # ---- per step ----------------------------------------------------------------------
    def prepare_step(self, req_ids: list[str], num_scheduled: np.ndarray, num_computed: np.ndarray) -> None:
        active = self.lanes.prepare_step(req_ids, num_scheduled, num_computed)
        num_tokens = int(np.sum(num_scheduled[: len(req_ids)])) if active else 0
        layers: set[int] = set()
        probe_rows = np.zeros(num_tokens, dtype=np.int64)  # [T]
        cap = np.zeros((self.cap_index.shape[0], num_tokens), dtype=np.int64)  # [L, T]
        start = 0
        for i, req_id in enumerate(req_ids):
            count = int(num_scheduled[i])
            live = self._live.get(req_id) if active else None
            if live is not None and count > 0:
                layers |= live.layers
                begin = int(num_computed[i])
                live.first = begin if live.first is None else min(live.first, begin)
                live.end = max(live.end, begin + count)
                rows = live.probe_rows[begin : begin + count]  # positions past the reservation: scratch row 0
                probe_rows[start : start + rows.shape[0]] = rows
                if live.observation.capture is not None:
                    self._mark_capture(live, cap, start, begin, count)
            start += count
        self.layers_in_step = frozenset(layers)
        self._write(probe_rows, cap)

    def _mark_capture(self, live: _Live, cap: np.ndarray, start: int, begin: int, count: int) -> None:
        order = self._capture_order(live)
        layers = live.observation.capture.layers
        for offset in range(count):
            slot = order.get(begin + offset)
            if slot is None:
                continue
            for i, layer in enumerate(layers):
                cap[layer, start + offset] = live.cap_rows[slot * len(layers) + i]
            live.captured.add(begin + offset)

    def _write(self, probe_rows: np.ndarray, cap: np.ndarray) -> None:
        """Copy this step's indices to the device; columns written last step and not now go back to 0."""
        num_tokens = probe_rows.shape[0]
        span = max(num_tokens, self._written)
        if span == 0:
            return
        rows = np.zeros((1 + cap.shape[0], span), dtype=np.int64)  # [1 + L, span]
        rows[0, :num_tokens], rows[1:, :num_tokens] = probe_rows, cap
        rows = torch.from_numpy(rows)
        self.probe_rows[:span].copy_(rows[0])
        self.cap_index[:, :span].copy_(rows[1:])
        self._written = num_tokens

    # ---- in the forward pass -----------------------------------------------------------
    def observe(self, layer: int, stream: torch.Tensor) -> None:
        """Write this layer's probe values and captures for the step's tokens. stream: [T, D]."""
        T = stream.shape[0]
        lanes = self.lanes.lanes(T)  # [T]
        rows = self.probe_rows[:T]  # [T]
        h = stream.float()  # [T, D]
        # gather + multiply + sum (not bmm: T tiny matrix-vector products; inductor fuses this into one loop)
        proj = (self.probe_dir.index_select(0, lanes) * h.unsqueeze(1)).sum(-1)  # [T, P, D] -> [T, P]
        norm = h.norm(dim=-1, keepdim=True).expand_as(proj)  # [T, P]
        mine = self.probe_at[layer].index_select(0, lanes)  # [T, P]
        self.probe_proj.index_put_((rows,), torch.where(mine, proj, self.probe_proj.index_select(0, rows)))
        self.probe_norm.index_put_((rows,), torch.where(mine, norm, self.probe_norm.index_select(0, rows)))
        self.cap_store.index_copy_(0, self.cap_index[layer, :T], h)


def _capture_rows(observation: ResolvedObservation, reach: int) -> int:
    """Capture-store rows a request needs: layers x the positions it can capture."""
    capture = observation.capture
    if capture is None:
        return 0
    layers = len(capture.layers)
    if capture.positions == "last":
        return layers
    if capture.positions == "all":
        return layers * min(CAPTURE_CAP // layers, reach)
    return layers * len(capture.positions)
