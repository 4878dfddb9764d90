"""Persistent per-worker tables that hold every slot's steering, and how a slot is loaded.

Legend: L = decoder layers, R = table rows = 2 * (slots + 1), D = hidden size,
K = projections per layer, H = attention heads (all ranks), E = routed experts.
Row 2*s + phase holds slot s for prompt tokens (phase 0) or generated tokens (phase 1);
rows 0 and 1 (slot 0) are the identity: zero addition, no projection, head scale 1, no bias.
Allocated once; slots are (re)written in place so compiled graphs see new contents.
"""

from __future__ import annotations

import torch

from steer_serve.model_shape import ModelShape
from steer_serve.request.resolved_steering import FORCE_LOGIT, MAX_PROJECTIONS_PER_LAYER, PHASES, ResolvedSteering


class SteeringTables:
    def __init__(self, shape: ModelShape, num_slots: int, device: torch.device, dtype: torch.dtype) -> None:
        rows = 2 * (num_slots + 1)
        L, D, K = shape.num_layers, shape.hidden_size, MAX_PROJECTIONS_PER_LAYER
        self.add = torch.zeros(L, rows, D, device=device, dtype=dtype)  # [L, R, D]
        self.proj_dir = torch.zeros(L, rows, K, D, device=device, dtype=dtype)  # [L, R, K, D]
        self.proj_value = torch.zeros(L, rows, K, device=device, dtype=dtype)  # [L, R, K]
        self.head_scale = torch.ones(L, rows, max(shape.num_heads, 1), device=device, dtype=dtype)  # [L, R, H]
        experts = max(shape.experts_per_layer.values(), default=0)
        # Router logits are float32 in vLLM's GateLinear; -inf must stay exact.
        self.router_bias = torch.zeros(L, rows, experts, device=device, dtype=torch.float32)  # [L, R, E]
        # Per-row dose limit of a caller's policy (|addition| <= dose * |layer output|); 0 = none.
        self.dose = torch.zeros(rows, device=device, dtype=torch.float32)  # [R]

    @property
    def nbytes(self) -> int:
        """Device memory held by the tables (reported by the engine stats route)."""
        tables = (self.add, self.proj_dir, self.proj_value, self.head_scale, self.router_bias, self.dose)
        return sum(t.numel() * t.element_size() for t in tables)

    def load(self, slot: int, steering: ResolvedSteering) -> None:
        """Overwrite slot `slot` (both phase rows) with `steering`; out-of-range entries are skipped."""
        rows = slice(2 * slot, 2 * slot + 2)
        for table, identity in ((self.add, 0.0), (self.proj_dir, 0.0), (self.proj_value, 0.0),
                                (self.head_scale, 1.0), (self.router_bias, 0.0)):
            table[:, rows].fill_(identity)
        self.dose[rows] = 0.0 if steering.max_dose is None else steering.max_dose
        self._load_additions(slot, steering)
        self._load_projections(slot, steering)
        self._load_heads(slot, steering)
        self._load_routing(slot, steering)

    def _fits(self, layer: int) -> bool:
        return 0 <= layer < self.add.shape[0]  # validated in the API process; never raise here

    def _load_additions(self, slot: int, steering: ResolvedSteering) -> None:
        for add in steering.additions:
            if self._fits(add.layer):
                vector = torch.from_numpy(add.vector).to(self.add.device, self.add.dtype)  # [D]
                for phase in PHASES[add.positions]:
                    self.add[add.layer, 2 * slot + phase] += vector

    def _load_projections(self, slot: int, steering: ResolvedSteering) -> None:
        used: dict[tuple[int, int], int] = {}
        for proj in steering.projections:
            if not self._fits(proj.layer):
                continue
            direction = torch.from_numpy(proj.direction).to(self.proj_dir.device, self.proj_dir.dtype)  # [D]
            for phase in PHASES[proj.positions]:
                row = 2 * slot + phase
                k = used.get((proj.layer, row), 0)
                if k < self.proj_dir.shape[2]:
                    self.proj_dir[proj.layer, row, k] = direction
                    self.proj_value[proj.layer, row, k] = proj.value
                    used[(proj.layer, row)] = k + 1

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
