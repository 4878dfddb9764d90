"""The statistics that turn activations into one direction per layer.

Each takes float64 matrices of one reduced activation per example (rows in dataset order)
and returns a float64 direction. Pure numpy, no randomness: the same rows give the same bits.
"""

from __future__ import annotations

import numpy as np


def ordered_mean(rows: np.ndarray) -> np.ndarray:
    """Mean over rows, summed one row at a time in order (numpy's pairwise sum reorders
    additions; this keeps vectors byte-identical to those built before the refactor)."""
    total = np.zeros(rows.shape[1], dtype=np.float64)
    for row in rows:
        total += row
    return total / rows.shape[0]


def difference_of_means(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """mean(positive) - mean(negative): contrastive activation addition (ActAdd / CAA)."""
    return ordered_mean(positive) - ordered_mean(negative)


def mean_centred(target: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """mean(target) - mean(neutral): the target set's offset from generic activations
    (Jorgensen et al., "Improving activation steering by mean-centring")."""
    return ordered_mean(target) - ordered_mean(neutral)


def pca_of_differences(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """repeng's `pca_diff`: the first principal component of the paired differences
    positive[i] - negative[i] (centred, as sklearn's PCA does), unit norm, signed so that
    positives project higher than negatives on average.

    Deterministic: LAPACK's SVD of the same matrix gives the same vector up to sign, and the
    sign is then fixed by the data.
    """
    if positive.shape != negative.shape:
        raise ValueError("pca needs paired examples: positive and negative counts differ")
    if positive.shape[0] < 2:
        raise ValueError("pca needs at least 2 pairs")
    differences = positive - negative
    centred = differences - differences.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    if singular[0] <= 0:
        raise ValueError("pca: the paired differences do not vary; use diff_means")
    direction = vt[0] / np.linalg.norm(vt[0])
    if float((positive @ direction).mean()) < float((negative @ direction).mean()):
        direction = -direction
    return direction
