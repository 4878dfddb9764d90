"""Latency quantiles from a mergeable log-bucketed histogram (the DDSketch mapping), so that the
store keeps counts per bin at insert time instead of sorting every latency at read time.

Bin `i` holds the values in (GAMMA**(i-1), GAMMA**i] and answers with 2*GAMMA**i/(GAMMA+1), which
is within ALPHA (0.5 %) of every value in the bin (Masson et al., "DDSketch", VLDB 2019). A
quantile is interpolated like `percentile_cont` / numpy's default between the estimates of the two
ranks it falls between; each is within ALPHA relative of the true value, so the result is too.
Values below MIN_VALUE (1 µs, e.g. a 0 TTFT) share MIN_VALUE's bin: there the error is absolute,
at most 1 µs (+0.5 %). Histograms add, so per-arm counts merge across batches, replicas and time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
MIN_VALUE = 1e-6


def bin_of(value: float) -> int:
    return math.ceil(math.log(max(value, MIN_VALUE)) / _LOG_GAMMA)


def value_of(index: int) -> float:
    return 2 * GAMMA ** index / (GAMMA + 1)


def quantiles(counts: Mapping[int, int], points: Sequence[float]) -> list[float] | None:
    """The quantiles at `points` (0..1) of the values counted per bin; None for an empty histogram."""
    bins = sorted((index, count) for index, count in counts.items() if count > 0)
    total = sum(count for _, count in bins)
    if total == 0:
        return None
    out = []
    for point in points:
        rank = point * (total - 1)
        low, high = _value_at(bins, math.floor(rank)), _value_at(bins, math.ceil(rank))
        out.append(low + (rank - math.floor(rank)) * (high - low))
    return out


def _value_at(bins: list[tuple[int, int]], rank: int) -> float:
    """The estimate of the value with 0-based `rank` in sorted order."""
    seen = 0
    for index, count in bins:
        seen += count
        if rank < seen:
            return value_of(index)
    return value_of(bins[-1][0])
