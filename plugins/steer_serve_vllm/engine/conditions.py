"""Conditional steering (CAST) in the forward pass: per-request condition state on the device.

A request with a condition (steer_serve/request/conditions.py) holds a lane (engine/lanes.py).
Per lane, persistent buffers hold its condition (unit direction, threshold, sign, condition layer,
which layers' edits are gated) and its state: the running sum and count of its prompt's hidden
states at the condition layer, whether it has decided, and the decision (`gate`).

In the forward pass, at each decoder layer's output and before that layer's edits:
  - `observe`: prompt tokens of undecided requests whose condition layer is this one add their
    hidden state to their lane's sum (index_add_, so prefill chunks accumulate across steps);
    the lane's last prompt token then decides: sim = cos(m, tanh((m.u) u)), m = sum / count,
    gate = sign * (sim - threshold) > 0, decided for good (IBM decides once and holds it);
    per-token lanes (compare "token") instead write each token's own verdict into `token_gate`;
  - `applies`: a token's edit on a gated layer is kept only when its lane's gate is set (per-token
    lanes: the token's own verdict, written at the condition layer earlier in the same forward,
    since gated layers are at or after it); lane 0 (unconditional requests, padding) gates nothing.
All tensor ops on persistent buffers, no host sync: the same code runs eager and compiled.
Tokens processed before the decision (earlier prefill chunks, layers before the condition layer
in the deciding step) see gate 0, as in IBM's LeashLayer, whose condition is unknown until the
condition layer has run.
Capacity: the runner keeps preempted requests until they finish, so live conditional requests may
exceed max_num_seqs; the owner sizes the lanes at twice that. Should they still run out, the request
fails closed (none of its residual edits apply; logged), rather than raising in the worker.
Legend: T tokens in the step, D hidden size, R = lanes + 1 (row 0: no lane), L decoder layers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from steer_serve.request.resolved_steering import Condition
from steer_serve_vllm.engine.lanes import LaneTable

logger = logging.getLogger(f"vllm.{__name__}")


class ConditionState:
    def __init__(self, hidden_size: int, num_layers: int, capacity: int, max_tokens: int, device: torch.device) -> None:
        self.lanes = LaneTable(capacity, max_tokens, device)
        rows = capacity + 1
        f32 = dict(dtype=torch.float32, device=device)
        self.direction = torch.zeros(rows, hidden_size, **f32)  # [R, D] unit
        self.threshold = torch.zeros(rows, **f32)  # [R]
        self.sign = torch.ones(rows, **f32)  # [R] +1: met above the threshold, -1: below
        self.layer = torch.full((rows,), -1, dtype=torch.long, device=device)  # [R] condition layer, -1 none
        self.gated = torch.zeros(rows, num_layers, dtype=torch.bool, device=device)  # [R, L]
        self.total = torch.zeros(rows, hidden_size, **f32)  # [R, D] sum of prompt hidden states
        self.count = torch.zeros(rows, **f32)  # [R]
        self.decided = torch.zeros(rows, **f32)  # [R] 0/1
        self.gate = torch.zeros(rows, **f32)  # [R] 0/1
        self.per_token = torch.zeros(rows, dtype=torch.bool, device=device)  # [R] compare "token"
        self.token_gate = torch.zeros(max_tokens, dtype=torch.bool, device=device)  # [T_max] this step's verdicts
        self.weight = torch.zeros(max_tokens, **f32)  # [T_max] 1: a prompt token the condition reads
        self.decides = torch.zeros(max_tokens, **f32)  # [T_max] 1: the prompt's last token
        self.closed = torch.zeros(max_tokens, **f32)  # [T_max] 1: a token of a request that got no lane
        pin = device.type == "cuda"
        self._staging = [torch.zeros(3, max_tokens, dtype=torch.float32, pin_memory=pin) for _ in range(2)]
        self._closed: set[str] = set()
        self._step = 0
        self._written = 0
        self._compare: dict[str, str] = {}  # req_id -> "mean" | "last" | "token"

    # ---- request lifecycle (host, between steps) ----------------------------------------
    def add_request(self, req_id: str, condition: Condition) -> None:
        try:
            lane = self.lanes.acquire(req_id)
        except RuntimeError:
            logger.error("steer-serve: no free lane for conditional request %s; its residual edits are off", req_id)
            self._closed.add(req_id)
            return
        self.direction[lane] = torch.from_numpy(condition.direction.astype(np.float32))
        self.threshold[lane] = condition.threshold
        self.sign[lane] = 1.0 if condition.above else -1.0
        self.layer[lane] = condition.layer
        self.gated[lane] = False
        self.gated[lane, list(condition.gated_layers)] = True
        self.per_token[lane] = condition.compare == "token"
        for state in (self.total[lane], self.count[lane], self.decided[lane], self.gate[lane]):
            state.zero_()
        self._compare[req_id] = condition.compare

    def remove_request(self, req_id: str) -> None:
        self._closed.discard(req_id)
        lane = self.lanes.release(req_id)
        if lane is not None:
            self.layer[lane] = -1
            self.gated[lane] = False
            self.per_token[lane] = False
            self._compare.pop(req_id, None)

    def prepare_step(self, req_ids: list[str], num_scheduled: np.ndarray, num_computed: np.ndarray,
                     num_prompt: np.ndarray) -> None:
        """Which of the step's tokens a prompt-level condition reads (prompt tokens, or only the last
        one) and which token decides (the prompt's last), in forward token order. Per-token
        conditions read nothing here: each token decides for itself in `observe`."""
        closed = [r in self._closed for r in req_ids]
        if not self.lanes.prepare_step(req_ids, num_scheduled, num_computed) and not any(closed):
            self._write(None, 0)
            return
        n = len(req_ids)
        counts = np.asarray(num_scheduled[:n], dtype=np.int64)  # [N]
        req_index = np.repeat(np.arange(n), counts)  # [T]
        position = np.asarray(num_computed[:n], dtype=np.int64)[req_index] + (
            np.arange(req_index.shape[0]) - (np.cumsum(counts) - counts)[req_index])  # [T]
        prompt_len = np.asarray(num_prompt[:n], dtype=np.int64)[req_index]  # [T]
        compare = [self._compare.get(r) for r in req_ids]
        conditional = np.array([c in ("mean", "last") for c in compare])[req_index]  # [T]
        last_only = np.array([c == "last" for c in compare])[req_index]  # [T]
        decides = conditional & (position == prompt_len - 1)
        reads = conditional & (position < prompt_len) & (~last_only | decides)
        self._write(np.stack([reads, decides, np.array(closed)[req_index]]).astype(np.float32), req_index.shape[0])

    def _write(self, values: np.ndarray | None, num_tokens: int) -> None:
        span = max(num_tokens, self._written)
        if span == 0:
            return
        self._step += 1
        cpu = self._staging[self._step % 2]
        if values is not None:
            cpu[:, :num_tokens] = torch.from_numpy(values)
        cpu[:, num_tokens:span] = 0
        self.weight[:span].copy_(cpu[0, :span], non_blocking=True)
        self.decides[:span].copy_(cpu[1, :span], non_blocking=True)
        self.closed[:span].copy_(cpu[2, :span], non_blocking=True)
        self._written = num_tokens

    # ---- in the forward pass ---------------------------------------------------------------
    def observe(self, layer: int, stream: torch.Tensor) -> None:
        """Accumulate this layer's prompt hidden states and decide at the prompt's last token; per-token
        lanes decide every token here. stream [T, D]."""
        num_tokens = stream.shape[0]
        lanes = self.lanes.lanes(num_tokens)  # [T]
        at_layer = self.layer.index_select(0, lanes) == layer  # [T]
        self._decide_tokens(stream, lanes, at_layer & self.per_token.index_select(0, lanes))
        here = at_layer.float() * (1.0 - self.decided.index_select(0, lanes))  # [T]
        weight = self.weight[:num_tokens] * here  # [T]
        self.total.index_add_(0, lanes, stream.float() * weight.unsqueeze(-1))
        self.count.index_add_(0, lanes, weight)
        decided_now = torch.zeros_like(self.gate).index_add_(0, lanes, self.decides[:num_tokens] * here)  # [R]
        mean = self.total / self.count.clamp_min(1.0).unsqueeze(-1)  # [R, D]; per lane, whatever T is
        met = (self.sign * (cast_similarity(mean, self.direction) - self.threshold) > 0).float()  # [R]
        self.gate.copy_(torch.where(decided_now > 0, met, self.gate))
        self.decided.copy_(torch.maximum(self.decided, decided_now.clamp(max=1.0)))

    def _decide_tokens(self, stream: torch.Tensor, lanes: torch.Tensor, deciding: torch.Tensor) -> None:
        """Per-token verdicts of the tokens whose lane gates per token at this layer; stream [T, D], lanes,
        deciding [T]. Other tokens keep what an earlier layer of this forward wrote for them."""
        num_tokens = stream.shape[0]
        sim = cast_similarity(stream.float(), self.direction.index_select(0, lanes))  # [T]
        met = self.sign.index_select(0, lanes) * (sim - self.threshold.index_select(0, lanes)) > 0  # [T]
        self.token_gate[:num_tokens].copy_(torch.where(deciding, met, self.token_gate[:num_tokens]))

    def applies(self, layer: int, num_tokens: int) -> torch.Tensor:
        """[T, 1] bool: whether each token's edit on this layer is kept (ungated, or its condition held)."""
        lanes = self.lanes.lanes(num_tokens)  # [T]
        gated = self.gated[:, layer].index_select(0, lanes)  # [T]
        held = torch.where(self.per_token.index_select(0, lanes), self.token_gate[:num_tokens],
                           self.gate.index_select(0, lanes) > 0)  # [T]
        kept = ~gated | held  # [T]
        return (kept & (self.closed[:num_tokens] == 0)).unsqueeze(-1)


def cast_similarity(hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """cos(h, tanh(P h)) with P = u u^T (u unit) per row: hidden, unit [N, D] -> [N]; 0 where h = 0."""
    projected = torch.tanh((hidden * unit).sum(-1, keepdim=True) * unit)  # [T, D]
    norms = hidden.norm(dim=-1) * projected.norm(dim=-1)  # [T]
    return (hidden * projected).sum(-1) / norms.clamp_min(1e-30)
