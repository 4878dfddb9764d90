"""Per-request observation in the worker: probe projections and captured residual vectors.

Legend: L = decoder layers, R = lanes + 1 (row 0 = scratch), P = probe columns per request,
D = hidden size, S = max_model_len (positions), C = CAPTURE_CAP (captured vectors per request),
T = tokens in the step.

Each observed request holds a lane (engine/lanes.py). Hooks on every decoder layer output read the
stream after the layer (after steering edits at that layer: they are registered later) and write,
in-graph, into persistent buffers indexed by (lane, position):
- probe_proj / probe_norm [R, S, P]: <h, unit direction> and |h| of the probe's own layer;
  a probe column only writes at its layer (probe_at mask), elsewhere the old value is kept;
- cap_store [R*C, D]: captured vectors; cap_index [L, T_max] says where token t goes at layer l
  (row 0 = scratch for every token not captured there).
Writes are idempotent per (lane, position), so recomputation after preemption and chunked prefill
give the same values. When the request leaves the engine (finished or aborted) its lane's rows are
copied to host memory (bounded: at most `max_held` results, oldest dropped with a warning) and the
lane is freed; the API fetches and drops the result by observation id (`take`).
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

logger = logging.getLogger(f"vllm.{__name__}")


@dataclass
class _Live:
    observation_id: str
    observation: ResolvedObservation
    lane: int
    num_prompt: int
    first: int | None = None  # first position that went through a forward pass
    end: int = 0  # one past the last such position
    captured: set[int] = field(default_factory=set)  # positions written to the capture store


class Observer:
    def __init__(self, num_layers: int, hidden: int, max_reqs: int, max_tokens: int, max_len: int,
                 device: torch.device, dtype: torch.dtype, max_held: int | None = None) -> None:
        self.lanes = LaneTable(max_reqs, max_tokens, device)
        R, P, L, D, S = max_reqs + 1, MAX_PROBES, num_layers, hidden, max_len
        self.hidden = hidden
        self.probe_dir = torch.zeros(L, R * P, D, device=device, dtype=dtype)  # [L, R*P, D]
        self.probe_at = torch.zeros(L, R, P, device=device, dtype=torch.bool)  # [L, R, P]
        self.probe_proj = torch.zeros(R, S, P, device=device, dtype=torch.float32)  # [R, S, P]
        self.probe_norm = torch.zeros(R, S, P, device=device, dtype=torch.float32)  # [R, S, P]
        self.cap_store = torch.zeros(R * CAPTURE_CAP, D, device=device, dtype=torch.float32)  # [R*C, D]
        self.cap_index = torch.zeros(L, max_tokens, device=device, dtype=torch.long)  # [L, T_max]
        self._cap_written = 0  # high-water mark of non-zero columns of cap_index
        self.active = False  # any observed token in this step (eager hooks skip otherwise)
        self._live: dict[str, _Live] = {}
        self._held: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.max_held = max_held if max_held is not None else 4 * max_reqs

    @property
    def nbytes(self) -> int:
        tensors = (self.probe_dir, self.probe_at, self.probe_proj, self.probe_norm, self.cap_store, self.cap_index)
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def num_live(self) -> int:
        return len(self._live)

    @property
    def num_held(self) -> int:
        return len(self._held)

    # ---- request lifecycle -------------------------------------------------------------
    def add_request(self, req_id: str, payload: str, num_prompt: int) -> None:
        try:
            observation_id, observation = observe_wire.decode(payload)
        except (ValueError, KeyError, TypeError) as exc:  # only the gateway writes it; never raise here
            logger.error("steer-serve: request %s has an unreadable observe payload (%s)", req_id, exc)
            return
        if req_id in self._live:
            return
        if self.lanes.num_live >= self.lanes.capacity:  # preempted requests keep theirs: never raise in a worker
            logger.error("steer-serve: no free observation lane for request %s", req_id)
            self._hold(observation_id, {"status": "done", "error": f"all {self.lanes.capacity} observation lanes "
                                        "were taken (preempted requests hold theirs); retry the request"})
            return
        lane = self.lanes.acquire(req_id)
        self._load(lane, observation)
        self._live[req_id] = _Live(observation_id, observation, lane, num_prompt)

    def _load(self, lane: int, observation: ResolvedObservation) -> None:
        P = self.probe_at.shape[2]
        columns = slice(lane * P, (lane + 1) * P)
        self.probe_dir[:, columns] = 0
        self.probe_at[:, lane] = False
        for k, probe in enumerate(observation.probes[:P]):  # the API refuses more than MAX_PROBES
            if 0 <= probe.layer < self.probe_dir.shape[0] and probe.direction.shape[0] == self.hidden:
                self.probe_dir[probe.layer, lane * P + k] = torch.from_numpy(probe.direction).to(self.probe_dir)
                self.probe_at[probe.layer, lane, k] = True
        self.probe_proj[lane] = 0
        self.probe_norm[lane] = 0

    def remove_request(self, req_id: str) -> None:
        """The request left the engine (finished or aborted): keep its result, free its lane."""
        live = self._live.pop(req_id, None)
        if live is None:
            return
        self.lanes.release(req_id)
        self._hold(live.observation_id, self._result(live))

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
        end = max(live.end, first)
        proj = self.probe_proj[live.lane, :end].cpu().numpy()  # [n, P]
        norm = self.probe_norm[live.lane, :end].cpu().numpy()  # [n, P]
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
            rows = [live.lane * CAPTURE_CAP + order[p] * n_layers + i for p in positions]
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
            return {p: p for p in range(CAPTURE_CAP // len(capture.layers))}
        return {p: j for j, p in enumerate(capture.positions)}

    # ---- per step ----------------------------------------------------------------------
    def prepare_step(self, req_ids: list[str], num_scheduled: np.ndarray, num_computed: np.ndarray) -> None:
        self.active = self.lanes.prepare_step(req_ids, num_scheduled, num_computed)
        cap = np.zeros((self.cap_index.shape[0], int(np.sum(num_scheduled[: len(req_ids)]))), dtype=np.int64) \
            if self.active else None  # [L, T]
        start = 0
        capturing = False
        for i, req_id in enumerate(req_ids):
            count = int(num_scheduled[i])
            live = self._live.get(req_id)
            if live is not None and count > 0:
                begin = int(num_computed[i])
                live.first = begin if live.first is None else min(live.first, begin)
                live.end = max(live.end, begin + count)
                if live.observation.capture is not None:
                    capturing |= self._mark_capture(live, cap, start, begin, count)
            start += count
        self._write_capture(cap if capturing else None)

    def _mark_capture(self, live: _Live, cap: np.ndarray, start: int, begin: int, count: int) -> bool:
        order = self._capture_order(live)
        layers = live.observation.capture.layers
        marked = False
        for offset in range(count):
            slot = order.get(begin + offset)
            if slot is None:
                continue
            for i, layer in enumerate(layers):
                cap[layer, start + offset] = live.lane * CAPTURE_CAP + slot * len(layers) + i
            live.captured.add(begin + offset)
            marked = True
        return marked

    def _write_capture(self, cap: np.ndarray | None) -> None:
        num_tokens = 0 if cap is None else cap.shape[1]
        span = max(num_tokens, self._cap_written)
        if span == 0:
            return
        full = np.zeros((self.cap_index.shape[0], span), dtype=np.int64)
        if cap is not None:
            full[:, :num_tokens] = cap
        self.cap_index[:, :span].copy_(torch.from_numpy(full))
        self._cap_written = num_tokens

    # ---- in the forward pass -----------------------------------------------------------
    def observe(self, layer: int, stream: torch.Tensor) -> None:
        """Write this layer's probe values and captures for the step's tokens. stream: [T, D]."""
        T = stream.shape[0]
        lanes = self.lanes.lanes(T)  # [T]
        positions = self.lanes.positions(T)  # [T]
        h = stream.float()  # [T, D]
        R, P = self.probe_at.shape[1], self.probe_at.shape[2]
        every = (h @ self.probe_dir[layer].float().t()).view(T, R, P)  # [T, R, P]
        proj = every.gather(1, lanes.view(T, 1, 1).expand(T, 1, P)).squeeze(1)  # [T, P]
        norm = h.norm(dim=-1, keepdim=True).expand(T, P)  # [T, P]
        mine = self.probe_at[layer].index_select(0, lanes)  # [T, P]
        where = (lanes, positions)
        self.probe_proj.index_put_(where, torch.where(mine, proj, self.probe_proj[where]))
        self.probe_norm.index_put_(where, torch.where(mine, norm, self.probe_norm[where]))
        self.cap_store.index_copy_(0, self.cap_index[layer, :T], h)
