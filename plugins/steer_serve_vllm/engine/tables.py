"""Persistent per-worker tables that hold every slot's steering, and how a slot is loaded.

Legend: L = decoder layers, R = table rows = 2 * (slots + 1), D = hidden size, P = pool rows,
K = projections per layer, H = attention heads (all ranks), E = routed experts.
Row 2*s + phase holds slot s for prompt tokens (phase 0) or generated tokens (phase 1);
rows 0 and 1 (slot 0) are the identity: zero addition, no projection, head scale 1, no bias.
Vectors live in one pool [P, D] shared by all slots (engine/vector_pool.py: pool row 0 is the
zero vector); the [L, R] / [L, R, K] index tables select pool rows, so the hot path is
token row -> pool index -> gather, and memory follows the vectors in use, not max_num_seqs.
Allocated once; slots are (re)written in place so compiled graphs see new contents.
"""

from __future__ import annotations

import numpy as np
import torch

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import DEFAULT_PROJECTIONS_PER_LAYER, FORCE_LOGIT, PHASES, ResolvedSteering
from steer_serve_vllm.engine.vector_pool import VectorPlan, plan_vectors


class SteeringTables:
    def __init__(self, shape: ModelShape, num_slots: int, device: torch.device, dtype: torch.dtype,
                 pool_rows: int, projections: int = DEFAULT_PROJECTIONS_PER_LAYER) -> None:
        rows = 2 * (num_slots + 1)
        L, D, K = shape.num_layers, shape.hidden_size, projections
        self.pool = torch.zeros(pool_rows, D, device=device, dtype=dtype)  # [P, D]; row 0 stays zero
        self.add_index = torch.zeros(L, rows, device=device, dtype=torch.int32)  # [L, R] -> pool row
        # Projections (ablate, clamp, SAE feature clamp; see LayerProjection): the edit moves the
        # stream along its direction by (value - f), f read through the encoder row, proj_offset, proj_threshold.
        self.proj_dir_index = torch.zeros(L, rows, K, device=device, dtype=torch.int32)  # [L, R, K] -> pool row
        self.proj_enc_index = torch.zeros(L, rows, K, device=device, dtype=torch.int32)  # [L, R, K] -> pool row
        self.proj_value = torch.zeros(L, rows, K, device=device, dtype=dtype)  # [L, R, K]
        self.proj_offset = torch.zeros(L, rows, K, device=device, dtype=dtype)  # [L, R, K]
        self.proj_threshold = torch.full((L, rows, K), float("-inf"), device=device, dtype=dtype)  # [L, R, K]
        self.proj_rescale = torch.zeros(L, rows, K, device=device, dtype=dtype)  # [L, R, K] 1: constant_norm_rescale
        # True: a TopK SAE's feature; its threshold comes per token from the layer's encoder (topk_encoders.py)
        self.proj_topk = torch.zeros(L, rows, K, device=device, dtype=torch.bool)  # [L, R, K]
        self.head_scale = torch.ones(L, rows, max(shape.num_heads, 1), device=device, dtype=dtype)  # [L, R, H]
        experts = max(shape.experts_per_layer.values(), default=0)
        # Router logits are float32 in vLLM's GateLinear; -inf must stay exact.
        self.router_bias = torch.zeros(L, rows, experts, device=device, dtype=torch.float32)  # [L, R, E]
        # Per-row dose limit of a caller's policy (|addition| <= dose * |layer output|); 0 = none.
        self.dose = torch.zeros(rows, device=device, dtype=torch.float32)  # [R]

    @property
    def nbytes(self) -> int:
        """Device memory held by the tables (reported by the engine stats route)."""
        tables = (self.pool, self.add_index, self.proj_dir_index, self.proj_enc_index, self.proj_value,
                  self.proj_offset, self.proj_threshold, self.proj_rescale, self.proj_topk, self.head_scale,
                  self.router_bias, self.dose)
        return sum(t.numel() * t.element_size() for t in tables)

    @property
    def num_projections(self) -> int:
        return self.proj_value.shape[2]

    def added(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Each token's addition at `layer`: rows [T] -> pool rows [T] -> [T, D]."""
        return self.pool.index_select(0, self.add_index[layer].index_select(0, rows))

    def projection_vectors(self, layer: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's projection directions and encoder rows at `layer`: ([T, K, D], [T, K, D])."""
        num_tokens, k = rows.shape[0], self.num_projections
        directions = self.pool.index_select(0, self.proj_dir_index[layer].index_select(0, rows).view(-1))  # [T*K, D]
        encoders = self.pool.index_select(0, self.proj_enc_index[layer].index_select(0, rows).view(-1))  # [T*K, D]
        return directions.view(num_tokens, k, -1), encoders.view(num_tokens, k, -1)

    def plan(self, steering: ResolvedSteering) -> VectorPlan:
        return plan_vectors(steering, self.add_index.shape[0], self.num_projections)

    def load(self, slot: int, steering: ResolvedSteering, pool_rows: list[int]) -> None:
        """Overwrite slot `slot` (both phase rows) with `steering`, its vectors going to `pool_rows`
        (one per vector of self.plan(steering), allocated by the caller); out-of-range entries are skipped."""
        rows = slice(2 * slot, 2 * slot + 2)
        for table, identity in ((self.add_index, 0), (self.proj_dir_index, 0), (self.proj_enc_index, 0),
                                (self.proj_value, 0.0), (self.proj_offset, 0.0), (self.proj_threshold, float("-inf")),
                                (self.proj_rescale, 0.0), (self.proj_topk, False), (self.head_scale, 1.0),
                                (self.router_bias, 0.0)):
            table[:, rows].fill_(identity)
        self.dose[rows] = 0.0 if steering.max_dose is None else steering.max_dose
        plan = self.plan(steering)
        if len(pool_rows) != plan.num_vectors:
            raise ValueError(f"{len(pool_rows)} pool rows for a plan of {plan.num_vectors} vectors")
        self._load_additions(slot, steering, plan, pool_rows)
        self._load_projections(slot, steering, plan, pool_rows)
        self._load_heads(slot, steering)
        self._load_routing(slot, steering)

    def _fits(self, layer: int) -> bool:
        return 0 <= layer < self.add_index.shape[0]  # validated in the API process; never raise here

    def _vector(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(self.pool.device, self.pool.dtype)  # [D]

    def _load_additions(self, slot: int, steering: ResolvedSteering, plan: VectorPlan, pool_rows: list[int]) -> None:
        for number, summed in plan.sums.items():
            total = torch.zeros_like(self.pool[0])  # [D], summed in the table dtype in request order
            for index in summed:
                total += self._vector(steering.additions[index].vector)
            self.pool[pool_rows[number]] = total
        for (layer, phase), number in plan.additions.items():
            self.add_index[layer, 2 * slot + phase] = pool_rows[number]

    def _load_projections(self, slot: int, steering: ResolvedSteering, plan: VectorPlan,
                          pool_rows: list[int]) -> None:
        for number, (kind, index) in enumerate(plan.sources):
            if kind != "add":
                proj = steering.projections[index]
                self.pool[pool_rows[number]] = self._vector(proj.direction if kind == "direction" else proj.reads)
        for entry in plan.projections:
            proj, at = steering.projections[entry.projection], (entry.layer, 2 * slot + entry.phase, entry.k)
            self.proj_dir_index[at] = pool_rows[entry.direction]
            self.proj_enc_index[at] = pool_rows[entry.reads]
            self.proj_value[at] = proj.value
            self.proj_offset[at] = proj.offset
            self.proj_threshold[at] = proj.threshold
            self.proj_rescale[at] = float(proj.rescale)
            self.proj_topk[at] = proj.topk > 0

    def _load_heads(self, slot: int, steering: ResolvedSteering) -> None:
        for heads in steering.head_scales:
            if self._fits(heads.layer) and heads.scales.shape[0] == self.head_scale.shape[2]:
                scales = torch.from_numpy(heads.scales).to(self.head_scale.device, self.head_scale.dtype)  # [H]
                for phase in PHASES[heads.positions]:
                    self.head_scale[heads.layer, 2 * slot + phase] *= scales

    def _load_routing(self, slot: int, steering: ResolvedSteering) -> None:
        """Disabled -> -inf, forced -> +FORCE_LOGIT; entries for one phase combine as a union."""
        num_experts = self.router_bias.shape[2]
        for route in steering.expert_routing:
            if not self._fits(route.layer):
                continue
            for phase in PHASES[route.positions]:
                bias = self.router_bias[route.layer, 2 * slot + phase]  # [E]
                bias[[e for e in route.forced if e < num_experts]] = FORCE_LOGIT
                bias[[e for e in route.disabled if e < num_experts]] = float("-inf")
