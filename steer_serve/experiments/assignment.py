"""Deterministic assignment of units to arms: a pure function of (salt, unit, weights).

No state is kept anywhere, so assignment is sticky across requests, restarts and API-server
processes by construction. Enrolment (coverage) and the arm use two independent hashes of the
same unit: raising coverage only adds units and never moves an enrolled one to another arm.
Arms own contiguous bucket ranges in file order, so changing weights moves only the units whose
bucket lies between the old and the new boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(salt: str, purpose: str, unit: str) -> int:
    """Bucket in [0, BUCKETS) of `unit`; `purpose` separates the coverage and arm hashes."""
    digest = hashlib.sha256(f"{salt}\x00{purpose}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def is_covered(salt: str, unit: str, coverage: float) -> bool:
    return bucket(salt, "coverage", unit) < round(coverage * BUCKETS)


def arm_index(salt: str, unit: str, weights: Sequence[float]) -> int:
    """Index of the arm whose bucket range holds the unit's arm bucket."""
    boundaries = bucket_boundaries(weights)
    position = bucket(salt, "arm", unit)
    return next(index for index, upper in enumerate(boundaries) if position < upper)


def bucket_boundaries(weights: Sequence[float]) -> list[int]:
    """Exclusive upper bucket of each arm; zero-weight arms own an empty range."""
    total = float(sum(weights))
    boundaries, cumulative = [], 0.0
    for weight in weights:
        cumulative += weight
        boundaries.append(round(cumulative / total * BUCKETS))
    boundaries[-1] = BUCKETS
    return boundaries


def hash_unit(salt: str, unit: str) -> str:
    """What the logs keep instead of the raw unit: stable per experiment, not reversible by salt-less readers."""
    return hashlib.sha256(f"{salt}\x00unit\x00{unit}".encode()).hexdigest()[:24]
