"""Time buckets shared by the roll-ups (written at insert) and the results (read at any time).

A timestamp falls in bucket `floor(ts * 1000) // level_ms` at each LEVEL (10 s, 1000 s, 10^5 s). The roll-ups keep sums per bucket at every level, because how long an experiment will run
is unknown when its rows arrive. The results take the finest level whose buckets over the
experiment's span number at most MAX_BUCKETS and group them into at most LOOKS equal looks, so a
look always ends on a bucket boundary: between 21 and 40 looks once the span covers 400 seconds,
one per 10 s before. The finest level is 10 s so that a sparse experiment does not need a
roll-up row per request. The same integer arithmetic runs in Python (roll-ups) and SQL (the raw latency
counts), so a row lands in the same bucket on both paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVELS_MS = (10_000, 1_000_000, 100_000_000)
MAX_BUCKETS = 4000
LOOKS = 40


def bucket(ts: float, level_ms: int) -> int:
    return math.floor(ts * 1000) // level_ms


@dataclass(frozen=True)
class Timeline:
    """Looks of `width` buckets of `level_ms`, starting at bucket `first`."""

    level_ms: int
    first: int
    width: int
    looks: int

    @classmethod
    def over(cls, first_ts: float, last_ts: float) -> "Timeline":
        for level_ms in LEVELS_MS:
            first, last = bucket(first_ts, level_ms), bucket(last_ts, level_ms)
            if last - first + 1 <= MAX_BUCKETS or level_ms == LEVELS_MS[-1]:
                width = math.ceil((last - first + 1) / LOOKS)
                return cls(level_ms, first, width, math.ceil((last - first + 1) / width))
        raise AssertionError("unreachable: the last level always answers")

    def look_of(self, bucket_index: int) -> int:
        return (bucket_index - self.first) // self.width

    def end_of(self, look: int) -> float:
        """The time (s) a look ends: it holds every row with ts < end_of(look)."""
        return (self.first + (look + 1) * self.width) * self.level_ms / 1000
