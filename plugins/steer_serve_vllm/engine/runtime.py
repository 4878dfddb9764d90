"""Per-worker steering state: the token->row index, request bookkeeping, slot loading.

T = tokens in the step (padded to the compiled/captured size). Each token's row in the
tables (see tables.py) is 2 * slot + phase, so one index per token selects both the
request's configuration and whether the token is a prompt or a generated token.

Everything the forward pass reads is allocated once and mutated in place: the compiled graph
(torch.compile, CUDA graphs) keeps the same tensor objects and only sees new contents.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from steer_serve.request import wire_format
from steer_serve.engine_stats import WorkerSteeringStats
from steer_serve.request.resolved_steering import ResolvedSteering
from steer_serve.model_shape import ModelShape
from steer_serve_vllm.engine.conditions import ConditionState
from steer_serve_vllm.engine.slots import SlotAllocator
from steer_serve_vllm.engine.tables import SteeringTables
from steer_serve_vllm.engine.topk_encoders import TopKEncoders
from steer_serve_vllm.engine.vector_pool import SteeringBudget, steering_budget

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only


class SteeringRuntime:
    def __init__(
        self, shape: ModelShape, max_reqs: int, max_tokens: int, device: torch.device, dtype: torch.dtype,
        budget: SteeringBudget | None = None,
    ) -> None:
        budget = budget or steering_budget(shape.num_layers, shape.hidden_size, dtype.itemsize, max_reqs)
        self.budget = budget
        self.slots = SlotAllocator(budget.slots, budget.pool_rows)
        self.tables = SteeringTables(shape, budget.slots, device, dtype, budget.pool_rows, budget.projections)
        self.token_rows = torch.zeros(max_tokens, dtype=torch.long, device=device)  # [T_max]
        self.topk_encoders = TopKEncoders()  # the worker loads --topk-clamp-saes before installing the hooks
        # CAST; twice max_reqs lanes: the runner keeps preempted requests until they finish
        self.conditions = ConditionState(shape.hidden_size, shape.num_layers, 2 * max_reqs, max_tokens, device)
        pin = device.type == "cuda"
        # Two pinned staging buffers, used alternately: with async scheduling the host prepares
        # step n+1 while step n's host-to-device copy may still be queued.
        self._staging = [torch.zeros(max_tokens, dtype=torch.long, pin_memory=pin) for _ in range(2)]  # [T_max]
        self._step = 0
        self._rows_written = 0  # high-water mark of non-zero entries in token_rows
        self._request_fingerprint: dict[str, str] = {}
        # Kinds of edit used by this step's requests; eager-mode hooks skip the others entirely.
        self.kinds_in_step: frozenset[str] = frozenset()
        # layer -> projection slots any of this step's requests fills there; skipping hooks run
        # projections only at these layers (and, for TopK clamps, only these slots).
        self.projections_in_step: dict[int, int] = {}
        self._configs: dict[str, tuple[ResolvedSteering, int]] = {}  # fingerprint -> (steering, live requests)
        self._depths: dict[str, dict[int, int]] = {}  # fingerprint -> its projection slots per layer

    # ---- request lifecycle -------------------------------------------------------------
    def add_request(self, req_id: str, extra_args: dict | None) -> None:
        payload = (extra_args or {}).get(wire_format.EXTRA_ARGS_KEY)
        if payload is None:
            return
        try:
            fingerprint, steering = wire_format.decode(payload)
        except (ValueError, KeyError, TypeError) as exc:
            # Only the API gateway writes this key, after validation; never raise in a worker.
            logger.error("steer-serve: request %s has an unreadable payload (%s); left unsteered", req_id, exc)
            return
        old = self._configs.get(fingerprint)
        self._configs[fingerprint] = (steering, (old[1] if old else 0) + 1)
        self._request_fingerprint[req_id] = fingerprint
        if steering.condition is not None:
            self.conditions.add_request(req_id, steering.condition)

    def remove_request(self, req_id: str) -> None:
        self.conditions.remove_request(req_id)
        fingerprint = self._request_fingerprint.pop(req_id, None)
        if fingerprint is None:
            return
        steering, live = self._configs[fingerprint]
        if live > 1:
            self._configs[fingerprint] = (steering, live - 1)
            return
        del self._configs[fingerprint]
        self._depths.pop(fingerprint, None)
        self.slots.forget(fingerprint)

    @property
    def num_live_requests(self) -> int:
        return len(self._request_fingerprint)

    def stats(self, rank: int) -> WorkerSteeringStats:
        """Bookkeeping counts for the engine stats route: after traffic stops, live counts must be 0."""
        return WorkerSteeringStats(
            rank=rank, live_requests=self.num_live_requests, live_configurations=len(self._configs),
            resident_slots=self.slots.num_resident, slot_capacity=self.slots.capacity,
            table_bytes=self.tables.nbytes + self.token_rows.numel() * self.token_rows.element_size(),
            vector_capacity=self.slots.vector_capacity, vectors_in_use=self.slots.vectors_in_use,
            pool_bytes=self.tables.pool.numel() * self.tables.pool.element_size(),
        )

    # ---- per step ----------------------------------------------------------------------
    def prepare_step(
        self, req_ids: list[str], num_scheduled: np.ndarray, num_computed: np.ndarray, num_prompt: np.ndarray
    ) -> None:
        """Fill token_rows for this step's tokens, in the forward's token order."""
        self.conditions.prepare_step(req_ids, num_scheduled, num_computed, num_prompt)
        fingerprints = [self._request_fingerprint.get(req_id) for req_id in req_ids]
        present = {fp for fp in fingerprints if fp}
        self.kinds_in_step = frozenset().union(*(self._configs[fp][0].kinds for fp in present))
        self.projections_in_step = self._projection_depths(present) if "projection" in self.kinds_in_step else {}
        if not self.kinds_in_step:
            self._write_rows(None, 0)
            return
        slot_of = self._assign_slots([fp for fp in fingerprints if fp is not None])
        slot = np.array([slot_of[fp] if fp else 0 for fp in fingerprints], dtype=np.int64)  # [N]
        req_index = np.repeat(np.arange(len(req_ids)), num_scheduled)  # [T]
        first_token = np.cumsum(num_scheduled) - num_scheduled  # [N]
        offset = np.arange(req_index.shape[0]) - first_token[req_index]  # [T]
        position = num_computed[: len(req_ids)][req_index] + offset  # [T]
        generated = position >= num_prompt[: len(req_ids)][req_index]  # [T]
        self._write_rows(2 * slot[req_index] + generated, req_index.shape[0])

    def _projection_depths(self, fingerprints: set[str]) -> dict[int, int]:
        """Per layer, the most projection slots one of these configurations fills (the plan the loader
        places them by fills a layer's slots from 0), so slots beyond it hold zero rows for every token."""
        depths: dict[int, int] = {}
        for fp in fingerprints:
            if fp not in self._depths:
                self._depths[fp] = self.tables.plan(self._configs[fp][0]).projection_depths
            for layer, depth in self._depths[fp].items():
                depths[layer] = max(depths.get(layer, 0), depth)
        return depths

    def _assign_slots(self, fingerprints: list[str]) -> dict[str, int]:
        steering = {fp: self._configs[fp][0] for fp in fingerprints}
        slot_of, loaded = self.slots.assign(fingerprints, lambda fp: self.tables.plan(steering[fp]).num_vectors)
        for fingerprint in loaded:
            self.tables.load(slot_of[fingerprint], steering[fingerprint], self.slots.pool_rows(fingerprint))
        return slot_of

    def _write_rows(self, rows: np.ndarray | None, num_tokens: int) -> None:
        span = max(num_tokens, self._rows_written)
        if span == 0:
            return
        self._step += 1
        cpu = self._staging[self._step % 2]
        if rows is not None:
            cpu[:num_tokens] = torch.from_numpy(rows)
        cpu[num_tokens:span] = 0
        self.token_rows[:span].copy_(cpu[:span], non_blocking=True)
        self._rows_written = num_tokens

    def rows(self, num_tokens: int) -> torch.Tensor:
        """Each token's table row for this step: [T]."""
        return self.token_rows[:num_tokens]

