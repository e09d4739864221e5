"""Segmentation metrics: pixel accuracy, IoU, Dice, and the ISBI 2012 challenge scores.

Pixel-wise (any number of classes K; `pred` and `truth` are (H, W) class indices):
    pixel_accuracy   fraction of pixels with the right class
    iou              per class |P & T| / |P | T| (NaN for a class absent from both), mean_iou
    dice             per class 2 |P & T| / (|P| + |T|)

ISBI 2012 "segmentation of neuronal structures in EM stacks" (Arganda-Carreras et al. 2015,
Front. Neuroanat. 9:142, doi:10.3389/fnana.2015.00142; the Fiji "Segmentation evaluation"
scripts, trainableSegmentation.metrics). Input: cell probabilities (1 = cell, 0 = membrane,
the challenge's submission convention) and binary truth (True / 255 = cell). The proposal is
binarised at each threshold t of THRESHOLDS = 0.0, 0.1, ..., 1.0 as `prob > t` (cell =
positive), and every score is the best one over the thresholds:

    pixel error  1 - max_t F1 of the cell pixels (precision tp/(tp+fp), recall tp/(tp+fn)).
    Rand error   1 - max_t foreground-restricted Rand F-score of the 4-connected components of
                 the cells, NO thinning (the challenge's 2012 ranking score).
    V_rand       max_t foreground-restricted Rand F-score after thinning the boundaries of truth
    V_info       and proposal to one pixel; same with the information-theoretic F-score (the
                 ranking scores since 2013).

Foreground-restricted scoring (the paper's Sec. 2.3; Fiji RandError.getForeground-
RestrictedRandIndexStatsN2). Let n_ij count the pixels in true segment i and proposed segment
j, counted only where the TRUTH is a cell (i > 0): truth boundary pixels do not count at all.
Proposed boundary pixels inside true cells (j = 0) are singletons: each its own segment of
one pixel. With t_i = sum_j n_ij (truth), s_j = sum_{i} n_ij (proposal, j > 0), n0 the
singletons and n = sum t_i:

    Rand:  A = sum_ij n_ij^2 + n0,  T = sum_i t_i^2,  S = sum_j s_j^2 + n0
           split = A / T (recall),  merge = A / S (precision),  F = 2 A / (T + S)
    Info:  H(T) = -sum_i (t_i/n) log(t_i/n),  H(S) = -sum_j (s_j/n) log(s_j/n) + (n0/n) log n,
           H(S,T) likewise over n_ij (+ the same singleton term), I = H(S) + H(T) - H(S,T),
           split = I / H(S),  merge = I / H(T),  F = 2 I / (H(S) + H(T))

(alpha = 0.5 in the paper's V_alpha). A split lowers the split score, a merge the merge
score; a perfect segmentation scores 1. Conventions for the degenerate cases: no truth cell
pixel at all gives F = 1 (nothing to get wrong); H(S) = H(T) = 0 (one segment each) gives
V_info = 1.

Thinning (V_rand, V_info). The challenge thins boundaries to one pixel before scoring, so
that the width of a drawn membrane does not matter. We do it by a seeded watershed with
4-connectivity (`thin_boundaries`): the seeds are the 4-connected components of the cell
mask, every boundary pixel is flooded from the seeds in order of increasing membrane
probability (1 - cell probability; the truth's boundary is flat, so it is flooded
breadth-first and the line lands in the middle), first in first out among equal values, and a
pixel reached by two different segments becomes a boundary ("dam") pixel. What is left is a
one-pixel-wide, 4-connected-separating boundary; no two different segments touch (4-neighbours).
This follows the paper's description; the Fiji implementation's exact flooding order may
differ, which moves dam pixels by a pixel here and there, not which cells are separated.

Aggregation over a stack (`isbi_scores`). Per slice, each score is maximised over the
thresholds on its own. For the whole stack, as the Fiji scripts do: pixel error and Rand
error pool the counts (tp, fp, fn; the pair sums A, T, S) of all slices at each threshold and
maximise the F-score of the pooled counts; V_rand and V_info average the per-slice scores at
each threshold and take the best threshold for the average.

Left out: the warping error (Jain et al. 2010) needs topology-preserving warps of the truth
(simple-point flips under a digital-topology test); it is not implemented rather than
approximated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numba import njit
from scipy import ndimage

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


# ----------------------------------------------------------------------------- pixel-wise


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class. pred, truth: (H, W) int."""
    pred, truth = _check_pair(pred, truth)
    for name, a in (("pred", pred), ("truth", truth)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} has class values outside 0..{n_classes - 1}: "
                             f"{int(a.min())}..{int(a.max())}")
    idx = truth.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def pixel_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose predicted class is the true class."""
    pred, truth = _check_pair(pred, truth)
    return float((pred == truth).mean()) if truth.size else 1.0


def iou(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Intersection over union per class, (K,) float64; NaN where a class is in neither."""
    cm = confusion_matrix(pred, truth, n_classes).astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def mean_iou(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean of `iou` over the classes present in prediction or truth."""
    v = iou(pred, truth, n_classes)
    return float(np.nanmean(v)) if np.isfinite(v).any() else 1.0


def dice(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice coefficient (= pixel F1) per class, (K,) float64; NaN where a class is in neither."""
    cm = confusion_matrix(pred, truth, n_classes).astype(np.float64)
    inter = np.diag(cm)
    total = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / total, np.nan)


def _check_pair(pred, truth):
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    return pred, truth


# ----------------------------------------------------------------------------- segments


def segments(cell_mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean cell mask (H, W) -> int32 labels 1.., 0 = boundary."""
    return ndimage.label(np.asarray(cell_mask, dtype=bool), structure=_FOUR)[0].astype(np.int32)


def thin_boundaries(cell_mask: np.ndarray, membrane=None) -> np.ndarray:
    """Segments of `cell_mask` (H, W) with the boundary between them thinned to one pixel.

    Seeded 4-connected watershed (module doc): seeds = `segments(cell_mask)`; the boundary
    pixels are flooded in order of increasing `membrane` (H, W) (None: flat, i.e. breadth-first
    from the seeds), first in first out among ties; a pixel that two segments reach becomes
    boundary (0). Returns int32 labels (H, W), 0 = the thinned boundary (and pixels no seed
    reaches, e.g. everything when there is no cell).
    """
    labels = segments(cell_mask)
    pri = (np.zeros(labels.shape) if membrane is None
           else np.asarray(membrane, dtype=np.float64))
    if pri.shape != labels.shape:
        raise ValueError(f"membrane map {pri.shape} and cell mask {labels.shape} differ in shape")
    return _flood(np.ascontiguousarray(labels), np.ascontiguousarray(pri))


@njit(cache=True)
def _heap_less(key, cnt, a, b):
    return key[a] < key[b] or (key[a] == key[b] and cnt[a] < cnt[b])


@njit(cache=True)
def _heap_push(key, cnt, idx, size, k, c, i):
    """Push (k, c, i) on the binary min-heap of `size` entries keyed by (key, cnt)."""
    pos = size
    key[pos], cnt[pos], idx[pos] = k, c, i
    while pos > 0:
        parent = (pos - 1) // 2
        if not _heap_less(key, cnt, pos, parent):
            break
        key[pos], key[parent] = key[parent], key[pos]
        cnt[pos], cnt[parent] = cnt[parent], cnt[pos]
        idx[pos], idx[parent] = idx[parent], idx[pos]
        pos = parent
    return size + 1


@njit(cache=True)
def _heap_pop(key, cnt, idx, size):
    """Remove the smallest entry; returns (its pixel index, new size)."""
    top = idx[0]
    size -= 1
    key[0], cnt[0], idx[0] = key[size], cnt[size], idx[size]
    pos = 0
    while True:
        left, right, small = 2 * pos + 1, 2 * pos + 2, pos
        if left < size and _heap_less(key, cnt, left, small):
            small = left
        if right < size and _heap_less(key, cnt, right, small):
            small = right
        if small == pos:
            break
        key[pos], key[small] = key[small], key[pos]
        cnt[pos], cnt[small] = cnt[small], cnt[pos]
        idx[pos], idx[small] = idx[small], idx[pos]
        pos = small
    return top, size


@njit(cache=True)
def _flood(labels, priority):
    """Seeded watershed with dams, 4-connectivity, in place on labels (H, W) int32 (> 0 seeds).

    A pixel enters the queue once, when a neighbour gets a label (seeds first, in raster
    order); the queue pops the smallest (priority, entry number). A popped pixel whose
    labelled 4-neighbours carry one label takes it and queues its unqueued neighbours
    (up, down, left, right); with two or more labels it becomes a dam (0).
    """
    H, W = labels.shape
    n = H * W
    lab = labels.ravel()
    pri = priority.ravel()
    queued = np.zeros(n, np.bool_)
    key = np.empty(n, np.float64)
    cnt = np.empty(n, np.int64)
    idx = np.empty(n, np.int64)
    size = 0
    counter = 0
    nbr = np.empty(4, np.int64)
    for i in range(n):
        if lab[i] > 0:
            queued[i] = True
    for i in range(n):
        if queued[i]:
            continue
        y, x = i // W, i % W
        if ((y > 0 and lab[i - W] > 0) or (y < H - 1 and lab[i + W] > 0)
                or (x > 0 and lab[i - 1] > 0) or (x < W - 1 and lab[i + 1] > 0)):
            queued[i] = True
            size = _heap_push(key, cnt, idx, size, pri[i], counter, i)
            counter += 1
    while size > 0:
        i, size = _heap_pop(key, cnt, idx, size)
        y, x = i // W, i % W
        m = 0
        if y > 0:
            nbr[m] = i - W
            m += 1
        if y < H - 1:
            nbr[m] = i + W
            m += 1
        if x > 0:
            nbr[m] = i - 1
            m += 1
        if x < W - 1:
            nbr[m] = i + 1
            m += 1
        found = 0
        clash = False
        for a in range(m):
            v = lab[nbr[a]]
            if v > 0:
                if found == 0:
                    found = v
                elif v != found:
                    clash = True
        if clash or found == 0:
            lab[i] = 0  # a dam: two segments meet here
            continue
        lab[i] = found
        for a in range(m):
            j = nbr[a]
            if not queued[j]:
                queued[j] = True
                size = _heap_push(key, cnt, idx, size, pri[j], counter, j)
                counter += 1
    return labels


# ----------------------------------------------------------------------------- Rand and info


class Scores(NamedTuple):
    """split (1 = no false splits), merge (1 = no false merges), fscore (their harmonic mean)."""

    split: float
    merge: float
    fscore: float


class _Contingency(NamedTuple):
    nij: np.ndarray  # counts of (true i > 0, proposed j > 0) pairs, float64
    t: np.ndarray  # true segment sizes (inside the truth's cells), float64
    s: np.ndarray  # proposed segment sizes (inside the truth's cells), float64
    n0: float  # proposed boundary pixels inside true cells (singletons)
    n: float  # true cell pixels


def _contingency(truth_seg: np.ndarray, pred_seg: np.ndarray) -> _Contingency:
    truth_seg, pred_seg = _check_pair(truth_seg, pred_seg)
    fg = truth_seg > 0
    t = truth_seg[fg].astype(np.int64)
    p = pred_seg[fg].astype(np.int64)
    single = p == 0
    t1, p1 = t[~single], p[~single]
    pairs = t1 * (int(p1.max(initial=0)) + 1) + p1
    nij = np.unique(pairs, return_counts=True)[1].astype(np.float64)
    ts = np.unique(t, return_counts=True)[1].astype(np.float64)
    ss = np.unique(p1, return_counts=True)[1].astype(np.float64)
    return _Contingency(nij, ts, ss, float(single.sum()), float(t.size))


def _rand_sums(c: _Contingency) -> tuple[float, float, float]:
    """(A, T, S) of the module doc: pairs together in both, in the truth, in the proposal."""
    return (float((c.nij**2).sum()) + c.n0, float((c.t**2).sum()),
            float((c.s**2).sum()) + c.n0)


def _rand_from_sums(a: float, t: float, s: float) -> Scores:
    if t == 0:  # no truth cell pixels
        return Scores(1.0, 1.0, 1.0)
    return Scores(float(a / t), float(a / s), float(2 * a / (t + s)))


def rand_scores(truth_seg: np.ndarray, pred_seg: np.ndarray) -> Scores:
    """Foreground-restricted Rand scores of two segmentations (H, W) int, 0 = boundary."""
    return _rand_from_sums(*_rand_sums(_contingency(truth_seg, pred_seg)))


def rand_fscore(truth_seg: np.ndarray, pred_seg: np.ndarray) -> float:
    """Foreground-restricted Rand F-score (see `rand_scores`)."""
    return rand_scores(truth_seg, pred_seg).fscore


def info_scores(truth_seg: np.ndarray, pred_seg: np.ndarray) -> Scores:
    """Foreground-restricted information-theoretic scores (module doc), 0 = boundary."""
    c = _contingency(truth_seg, pred_seg)
    if c.n == 0:
        return Scores(1.0, 1.0, 1.0)
    n = c.n
    single = c.n0 / n * np.log(n)  # n0 segments of probability 1/n each

    def entropy(counts):
        q = counts / n
        return float(-(q * np.log(q)).sum())

    h_t = entropy(c.t)
    h_s = entropy(c.s) + single
    h_st = entropy(c.nij) + single
    mutual = max(h_s + h_t - h_st, 0.0)  # >= 0; clip the rounding
    split = mutual / h_s if h_s > 0 else 1.0
    merge = mutual / h_t if h_t > 0 else 1.0
    f = 2 * mutual / (h_s + h_t) if h_s + h_t > 0 else 1.0
    return Scores(float(split), float(merge), float(f))


# ----------------------------------------------------------------------------- ISBI 2012


def binary_truth(truth_cell) -> np.ndarray:
    """Truth as bool (True = cell): bool as is, else 0 = boundary and one other value = cell."""
    t = np.asarray(truth_cell)
    if t.dtype != bool:
        values = np.unique(t)
        if values.size > 2 or (values.size == 2 and values[0] != 0):
            raise ValueError(f"truth must be binary (0 = boundary, one other value = cell, "
                             f"e.g. 255 in ISBI labels); found values {values[:10].tolist()}")
        t = t != 0
    return t


def _check_prob(cell_prob) -> np.ndarray:
    """Probabilities as float64 in [0, 1]; float32 softmax may overshoot by rounding (clipped)."""
    p = np.asarray(cell_prob, dtype=np.float64)
    if p.size and (np.isnan(p).any() or p.min() < -1e-5 or p.max() > 1 + 1e-5):
        raise ValueError(f"cell probabilities must lie in [0, 1]; found "
                         f"[{np.nanmin(p):g}, {np.nanmax(p):g}] (divide 8-bit maps by 255)")
    return np.clip(p, 0.0, 1.0)


@dataclass
class SliceCounts:
    """Everything the ISBI scores need from one slice, per threshold (arrays of len(thresholds)).

    pixel: (tp, fp, fn) of the cell pixels; rand: (A, T, S) without thinning;
    v_rand, v_info: Scores after thinning.
    """

    thresholds: tuple
    pixel: np.ndarray  # (n_thresholds, 3) float64
    rand: np.ndarray  # (n_thresholds, 3) float64
    v_rand: list = field(default_factory=list)  # [Scores] per threshold
    v_info: list = field(default_factory=list)


def slice_counts(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS,
                 thinned: bool = True) -> SliceCounts:
    """Per-threshold counts and scores of one slice: cell_prob (H, W) in [0, 1], truth (H, W)
    binary. thinned=False skips V_rand / V_info (the watershed)."""
    prob, truth = _check_prob(cell_prob), binary_truth(truth_cell)
    _check_pair(prob, truth)
    truth_seg = segments(truth)
    truth_thin = thin_boundaries(truth) if thinned else None
    membrane = 1.0 - prob
    pixel, rand, v_rand, v_info = [], [], [], []
    for th in thresholds:
        cell = prob > th
        tp = float((cell & truth).sum())
        pixel.append((tp, float((cell & ~truth).sum()), float((~cell & truth).sum())))
        rand.append(_rand_sums(_contingency(truth_seg, segments(cell))))
        if thinned:
            pred_thin = thin_boundaries(cell, membrane)
            v_rand.append(rand_scores(truth_thin, pred_thin))
            v_info.append(info_scores(truth_thin, pred_thin))
    return SliceCounts(tuple(thresholds), np.array(pixel), np.array(rand), v_rand, v_info)


def _f1(tp, fp, fn):
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 1.0)


def _rand_f(sums):
    a, t, s = sums[..., 0], sums[..., 1], sums[..., 2]
    return np.where(t > 0, 2 * a / np.where(t + s > 0, t + s, 1), 1.0)


@dataclass
class IsbiResult:
    """ISBI scores of one slice or a stack, each with the threshold that gave it."""

    pixel_error: float
    rand_error: float
    v_rand: float = float("nan")
    v_info: float = float("nan")
    thresholds: dict = field(default_factory=dict)  # score name -> best threshold

    def as_dict(self) -> dict:
        return {"pixel_error": self.pixel_error, "rand_error": self.rand_error,
                "v_rand": self.v_rand, "v_info": self.v_info}


def _best(values, thresholds, higher=True):
    values = np.asarray(values, dtype=np.float64)
    k = int(np.argmax(values) if higher else np.argmin(values))  # first best: lowest threshold
    return float(values[k]), thresholds[k]


def scores_of(counts: list[SliceCounts]) -> IsbiResult:
    """ISBI scores of a stack from its slices' counts (module doc: pooled / averaged)."""
    ths = counts[0].thresholds
    pix = np.sum([c.pixel for c in counts], axis=0)  # (n_thresholds, 3)
    ran = np.sum([c.rand for c in counts], axis=0)
    f_pix, t_pix = _best(_f1(pix[:, 0], pix[:, 1], pix[:, 2]), ths)
    f_rand, t_rand = _best(_rand_f(ran), ths)
    res = IsbiResult(1.0 - f_pix, 1.0 - f_rand, thresholds={"pixel_error": t_pix,
                                                            "rand_error": t_rand})
    if all(c.v_rand for c in counts):
        v_rand = np.mean([[s.fscore for s in c.v_rand] for c in counts], axis=0)
        v_info = np.mean([[s.fscore for s in c.v_info] for c in counts], axis=0)
        res.v_rand, res.thresholds["v_rand"] = _best(v_rand, ths)
        res.v_info, res.thresholds["v_info"] = _best(v_info, ths)
    return res


def isbi_scores(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS,
                thinned: bool = True) -> IsbiResult:
    """ISBI 2012 scores of one slice (H, W) or a stack (N, H, W) (module doc).

    cell_prob: probability of 'cell' in [0, 1]; truth_cell: binary, True / non-zero = cell.
    """
    prob, truth = np.asarray(cell_prob), np.asarray(truth_cell)
    if prob.shape != truth.shape or prob.ndim not in (2, 3):
        raise ValueError(f"isbi_scores needs probabilities and truth of one shape (H, W) or "
                         f"(N, H, W); got {prob.shape} and {truth.shape}")
    if prob.ndim == 2:
        prob, truth = prob[None], truth[None]
    return scores_of([slice_counts(p, t, thresholds, thinned)
                      for p, t in zip(prob, truth, strict=True)])


def pixel_error(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS) -> float:
    """ISBI pixel error: 1 - max over thresholds of the pixel F1 of the cells (H, W)."""
    return isbi_scores(cell_prob, truth_cell, thresholds, thinned=False).pixel_error


def rand_error(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS) -> float:
    """ISBI 2012 Rand error: 1 - max over thresholds of the foreground-restricted Rand F-score
    of the 4-connected components, without thinning.

    cell_prob: (H, W) probability of 'cell'; truth_cell: (H, W) bool (True = cell).
    """
    return isbi_scores(cell_prob, truth_cell, thresholds, thinned=False).rand_error


def v_rand(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS) -> float:
    """V_rand (thinned, foreground-restricted Rand F-score, best threshold) of a slice or stack."""
    return isbi_scores(cell_prob, truth_cell, thresholds).v_rand


def v_info(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS) -> float:
    """V_info (thinned, foreground-restricted information F-score, best threshold)."""
    return isbi_scores(cell_prob, truth_cell, thresholds).v_info
