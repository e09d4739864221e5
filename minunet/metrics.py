"""Segmentation metrics: pixel accuracy, IoU, Dice, and the ISBI 2012 Rand error.

ISBI 2012 (Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142): the Rand
error is 1 - the maximal foreground-restricted Rand F-score over thresholds;
segments are the 4-connected components of the cell pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def segments(cell_mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean cell mask (H, W) -> int labels, 0 = boundary."""
    return ndimage.label(cell_mask, structure=_FOUR)[0]


def rand_fscore(truth_seg: np.ndarray, pred_seg: np.ndarray) -> float:
    """Foreground-restricted Rand F-score of two segmentations (H, W) int, 0 = background.

    Only pixels inside a true segment count. p_ij is the joint histogram of
    (true segment i, predicted segment j); a predicted background pixel is its
    own singleton segment. Pair counts: sum p_ij^2 (same in both), sum a_i^2
    (same in truth), sum b_j^2 (same in prediction); precision = sum p_ij^2 /
    sum b_j^2, recall = sum p_ij^2 / sum a_i^2, F = harmonic mean.
    """
    fg = truth_seg > 0
    t = truth_seg[fg].astype(np.int64)
    p = pred_seg[fg].astype(np.int64)
    if t.size == 0:
        return 1.0
    singles = p == 0
    n_single = int(singles.sum())
    t2, p2 = t[~singles], p[~singles]
    pairs = t2 * (int(p.max()) + 1) + p2
    _, p_ij = np.unique(pairs, return_counts=True)
    _, a = np.unique(t, return_counts=True)
    _, b = np.unique(p2, return_counts=True)
    s_ij = float((p_ij.astype(np.float64) ** 2).sum()) + n_single
    s_a = float((a.astype(np.float64) ** 2).sum())
    s_b = float((b.astype(np.float64) ** 2).sum()) + n_single
    precision, recall = s_ij / s_b, s_ij / s_a
    return 2 * precision * recall / (precision + recall)


def rand_error(cell_prob: np.ndarray, truth_cell: np.ndarray,
               thresholds=np.linspace(0.0, 1.0, 11)[1:-1]) -> float:
    """ISBI 2012 Rand error: 1 - max over thresholds of the foreground-restricted Rand F-score.

    cell_prob: (H, W) probability of 'cell'; truth_cell: (H, W) bool (True = cell).
    """
    truth = segments(truth_cell)
    best = max(rand_fscore(truth, segments(cell_prob > th)) for th in thresholds)
    return 1.0 - best
