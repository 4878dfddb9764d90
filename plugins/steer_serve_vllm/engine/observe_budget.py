"""How much worker memory observation may use (`--observe-memory` MiB), and the row pools it is cut into.

Observed requests keep their results in two pooled stores (engine/observer.py), not in per-lane
arrays sized by max_model_len:
- probe store: one row per token position of a request with probes, MAX_PROBES float32 values
  for the projection and as many for the norm (2 x 8 x 4 = 64 bytes per position); a request
  takes min(prompt + max_tokens, max_model_len) rows;
- capture store: one row per captured vector ([D] float32 = 4D bytes); a request takes
  layers x positions rows ("last": 1 position; "all": min(CAPTURE_CAP // layers, prompt + max_tokens)).
The budget is split in halves between the two stores, each never smaller than one request's largest
need (max_model_len positions, CAPTURE_CAP vectors), so every valid request fits on an idle worker:

    probe_positions = max(floor(M / 2 / 64), max_model_len)
    capture_vectors = max(floor(M / 2 / (4 D)), CAPTURE_CAP)          M = --observe-memory x 2^20

A request that does not fit next to those holding rows gets the explicit observation error (the
same as when every lane is taken) and is served without observation. Fixed besides (per lane,
R = max_num_seqs + 1): probe directions R x 8 x D float32 and masks L x R x 8 bytes, plus
(L + 1) x max_num_tokens x 8 bytes of per-step indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from steer_serve.request.observe_spec import CAPTURE_CAP, MAX_PROBES

PROBE_ROW_BYTES = 2 * MAX_PROBES * 4  # projection + norm, float32


@dataclass(frozen=True)
class ObserveBudget:
    probe_positions: int  # rows of the probe store (row 0, the scratch row, not counted)
    capture_vectors: int  # rows of the capture store (row 0 not counted)


def observe_budget(hidden: int, max_len: int, memory_mib: float) -> ObserveBudget:
    half = memory_mib * 2**20 / 2
    return ObserveBudget(max(int(half // PROBE_ROW_BYTES), max_len), max(int(half // (4 * hidden)), CAPTURE_CAP))


class RowPool:
    """Rows 1..capacity of a persistent buffer (row 0 is the scratch row), handed out one by one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = np.arange(capacity, 0, -1, dtype=np.int64)  # free rows are _free[:_size]
        self._size = capacity

    @property
    def in_use(self) -> int:
        return self.capacity - self._size

    def take(self, count: int) -> np.ndarray | None:
        """`count` rows (in no particular order), or None when fewer are free (nothing taken)."""
        if count > self._size:
            return None
        self._size -= count
        return self._free[self._size : self._size + count][::-1].copy()

    def give(self, rows: np.ndarray) -> None:
        self._free[self._size : self._size + rows.shape[0]] = rows
        self._size += rows.shape[0]
