"""Per-request lanes: a small integer per live request, and each step's token -> (lane, position).

A feature that keeps per-request state on the device (observation results, conditional-steering
state) indexes its persistent buffers by lane: buffer[lane, ...]. Lane 0 means "no lane": padded
tokens and tokens of requests without a lane map to it, so buffers keep row 0 as a scratch row that
in-graph writes may scribble on. Lanes are taken when a request arrives and given back when it
leaves (finished, aborted or dropped); capacity = max_num_seqs, so every running request can hold one.

Each step, `prepare_step` fills two persistent index buffers in the forward's token order:
token_lanes [T_max] (the token's lane, 0 for none) and token_positions [T_max] (the token's position
in its request: 0.. for prompt tokens, then generated ones; 0 for lane-0 tokens). Hooks slice them by
the step's token count, so the compiled graph keeps reading the same tensor objects.
"""

from __future__ import annotations

import numpy as np
import torch


class LaneTable:
    def __init__(self, capacity: int, max_tokens: int, device: torch.device) -> None:
        self.capacity = capacity
        self._free = list(range(capacity, 0, -1))  # lanes 1..capacity, popped from the end
        self._lane_of: dict[str, int] = {}
        self.token_lanes = torch.zeros(max_tokens, dtype=torch.long, device=device)  # [T_max]
        self.token_positions = torch.zeros(max_tokens, dtype=torch.long, device=device)  # [T_max]
        pin = device.type == "cuda"
        # Two pinned staging buffers used alternately (async scheduling prepares step n+1 while
        # step n's copy may still be queued); row 0: lanes, row 1: positions.
        self._staging = [torch.zeros(2, max_tokens, dtype=torch.long, pin_memory=pin) for _ in range(2)]  # [2, T_max]
        self._step = 0
        self._written = 0  # high-water mark of possibly non-zero entries on the device

    # ---- request lifecycle -------------------------------------------------------------
    def acquire(self, req_id: str) -> int:
        """The request's lane (a new one unless it holds one); raises when all lanes are taken,
        which cannot happen while capacity >= the engine's max_num_seqs."""
        lane = self._lane_of.get(req_id)
        if lane is None:
            if not self._free:
                raise RuntimeError(f"all {self.capacity} lanes are taken")
            lane = self._lane_of[req_id] = self._free.pop()
        return lane

    def release(self, req_id: str) -> int | None:
        """Give the request's lane back; returns it (None if the request held none)."""
        lane = self._lane_of.pop(req_id, None)
        if lane is not None:
            self._free.append(lane)
        return lane

    def lane_of(self, req_id: str) -> int:
        """The request's lane, 0 when it holds none."""
        return self._lane_of.get(req_id, 0)

    @property
    def num_live(self) -> int:
        return len(self._lane_of)

    # ---- per step ----------------------------------------------------------------------
    def prepare_step(self, req_ids: list[str], num_scheduled: np.ndarray, num_computed: np.ndarray) -> bool:
        """Fill token_lanes / token_positions for this step (batch order = forward token order).

        num_scheduled[i]: tokens of request i in this step; num_computed[i]: its tokens computed
        before this step (so its first token here has position num_computed[i]).
        Returns whether any token of the step has a lane."""
        lanes = np.array([self._lane_of.get(r, 0) for r in req_ids], dtype=np.int64)  # [N]
        if not lanes.any():
            self._write(None, None, 0)
            return False
        counts = np.asarray(num_scheduled[: len(req_ids)], dtype=np.int64)  # [N]
        req_index = np.repeat(np.arange(len(req_ids)), counts)  # [T]
        first_token = np.cumsum(counts) - counts  # [N]
        offset = np.arange(req_index.shape[0]) - first_token[req_index]  # [T]
        token_lane = lanes[req_index]  # [T]
        position = (np.asarray(num_computed[: len(req_ids)], dtype=np.int64)[req_index] + offset) * (token_lane > 0)  # [T]
        self._write(token_lane, position, req_index.shape[0])
        return True

    def lanes(self, num_tokens: int) -> torch.Tensor:
        """Each token's lane this step: [T]."""
        return self.token_lanes[:num_tokens]

    def positions(self, num_tokens: int) -> torch.Tensor:
        """Each token's position in its request this step (0 for lane-0 tokens): [T]."""
        return self.token_positions[:num_tokens]

    def _write(self, lanes: np.ndarray | None, positions: np.ndarray | None, num_tokens: int) -> None:
        span = max(num_tokens, self._written)
        if span == 0:
            return
        self._step += 1
        cpu = self._staging[self._step % 2]
        if lanes is not None:
            cpu[0, :num_tokens] = torch.from_numpy(lanes)
            cpu[1, :num_tokens] = torch.from_numpy(positions)
        cpu[:, num_tokens:span] = 0
        self.token_lanes[:span].copy_(cpu[0, :span], non_blocking=True)
        self.token_positions[:span].copy_(cpu[1, :span], non_blocking=True)
        self._written = num_tokens
