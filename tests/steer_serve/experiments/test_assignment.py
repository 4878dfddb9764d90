"""Assignment is a deterministic hash: sticky, split as weighted, stable under coverage changes."""

from __future__ import annotations

import subprocess
import sys

from scipy import stats

from steer_serve.experiments.assignment import BUCKETS, arm_index, bucket, bucket_boundaries, hash_unit, is_covered

UNITS = [f"user-{i}" for i in range(10_000)]


def test_buckets_are_pinned_and_equal_in_another_process() -> None:
    # Pinned: a change of hash would silently move every live user to another arm.
    assert bucket("s", "arm", "alice") == 5894  # first 8 bytes of sha256(b"s\\0arm\\0alice"), mod 10000
    code = "from steer_serve.experiments.assignment import bucket; print(bucket('s', 'arm', 'alice'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"}, cwd="/")
    assert int(other.stdout) == bucket("s", "arm", "alice")


def test_same_unit_same_arm_every_time() -> None:
    weights = [50, 25, 25]
    first = [arm_index("salt", unit, weights) for unit in UNITS]
    assert first == [arm_index("salt", unit, weights) for unit in UNITS]


def test_split_of_10k_units_matches_weights() -> None:
    weights = [50, 25, 25]
    counts = [0, 0, 0]
    for unit in UNITS:
        counts[arm_index("exp-salt", unit, weights)] += 1
    expected = [len(UNITS) * w / sum(weights) for w in weights]
    assert stats.chisquare(counts, expected).pvalue > 0.001, counts
    assert all(abs(c - e) / e < 0.05 for c, e in zip(counts, expected)), counts


def test_salts_are_independent() -> None:
    a = [arm_index("salt-a", unit, [1, 1]) for unit in UNITS]
    b = [arm_index("salt-b", unit, [1, 1]) for unit in UNITS]
    table = [[sum(1 for x, y in zip(a, b) if (x, y) == (i, j)) for j in (0, 1)] for i in (0, 1)]
    assert stats.chi2_contingency(table).pvalue > 0.001, table


def test_coverage_fraction_and_raising_it_keeps_enrolled_units_in_their_arm() -> None:
    at_10 = {u for u in UNITS if is_covered("s", u, 0.10)}
    at_30 = {u for u in UNITS if is_covered("s", u, 0.30)}
    assert abs(len(at_10) - 1000) < 100 and abs(len(at_30) - 3000) < 180
    assert at_10 <= at_30
    # coverage and arm use separate hashes: the enrolled units still split evenly
    arms = [arm_index("s", u, [1, 1]) for u in at_10]
    assert stats.chisquare([arms.count(0), arms.count(1)]).pvalue > 0.001


def test_changing_weights_moves_only_the_units_between_boundaries() -> None:
    before = {u: arm_index("s", u, [50, 50]) for u in UNITS}
    after = {u: arm_index("s", u, [60, 40]) for u in UNITS}
    moved = [u for u in UNITS if before[u] != after[u]]
    assert all(before[u] == 1 and after[u] == 0 for u in moved)
    assert all(5000 <= bucket("s", "arm", u) < 6000 for u in moved)
    assert abs(len(moved) - 1000) < 100


def test_zero_weight_arm_gets_nobody() -> None:
    assert bucket_boundaries([0, 1, 0]) == [0, BUCKETS, BUCKETS]
    assert {arm_index("s", u, [0, 1, 0]) for u in UNITS[:2000]} == {1}


def test_unit_hash_hides_the_user_but_is_stable() -> None:
    assert hash_unit("s", "alice") == hash_unit("s", "alice") != hash_unit("t", "alice")
    assert "alice" not in hash_unit("s", "alice") and len(hash_unit("s", "alice")) == 24
