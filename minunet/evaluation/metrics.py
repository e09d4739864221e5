"""Segmentation metrics: pixel accuracy, IoU, Dice, and the ISBI 2012 challenge scores.

Pixel-wise (any number of classes K; `pred` and `truth` are (H, W) class indices):
    pixel_accuracy   fraction of pixels with the right class
    iou              per class |P & T| / |P | T| (NaN for a class absent from both), mean_iou
    dice             per class 2 |P & T| / (|P| + |T|)

ISBI 2012 "segmentation of neuronal structures in EM stacks" (Arganda-Carreras et al. 2015,
Front. Neuroanat. 9:142, doi:10.3389/fnana.2015.00142), computed as the challenge computes
them: Fiji's Trainable Segmentation metrics (package trainableSegmentation.metrics, repository
fiji/Trainable_Segmentation), called by the challenge's "Segmentation evaluation after border
thinning" script. Input: cell probabilities (1 = cell, 0 = membrane, the challenge's submission
convention) and binary truth (True / 255 = cell). The proposal is binarised at each threshold t
of THRESHOLDS = 0.0, 0.1, ..., 1.0 as `prob > t` (cell = positive), and every score is the best
one over the thresholds:

    pixel error  1 - max_t F1 of the cell pixels (precision tp/(tp+fp), recall tp/(tp+fn)).
    Rand error   1 - max_t foreground-restricted Rand F-score of the 4-connected components of
                 the cells, no thinning anywhere (the challenge's 2012 ranking score; Fiji
                 RandError.getForegroundRestrictedRandIndexStatsN2).
    V_rand       max_t foreground-restricted Rand F-score, the truth's 4-connected components
                 against the proposal after thinning ITS boundaries (never the truth's) with a
                 watershed (the ranking score since 2013; Fiji RandError.
                 getForegroundRestrictedRandAfterThinningStatsN2, getMaximalVRandAfterThinning).
    V_info       the same with the information-theoretic F-score (Fiji VariationOfInformation.
                 foregroundRestrictedScoreAfterThinningN2, getMaximalVInfoAfterThinning).

The truth is never thinned: its boundary pixels, however wide, simply do not count (below), so a
5-pixel membrane in the truth against a 1-pixel line along its middle in the proposal scores 1.

Foreground-restricted scoring (the paper's Sec. 2.3; Fiji RandError.getForegroundRestricted-
RandIndexStatsN2 on two label images, VariationOfInformation.foregroundRestrictedFscore). Let n_ij
count the pixels in true segment i and proposed segment j, counted only where the TRUTH is a
cell (i > 0): truth boundary pixels do not count at all. Proposed boundary pixels inside true
cells (j = 0) are singletons: each its own segment of one pixel. With t_i = sum_j n_ij (truth,
j = 0 included), s_j = sum_{i} n_ij (proposal, j > 0), n0 the singletons and n = sum t_i (the
truth's cell pixels; Fiji works with p_ij = n_ij / n, the same ratios):

    Rand:  A = sum_ij n_ij^2 + n0,  T = sum_i t_i^2,  S = sum_j s_j^2 + n0
           split = A / T (recall),  merge = A / S (precision),  F = 2 A / (T + S)
    Info:  H(T) = -sum_i (t_i/n) log(t_i/n),  H(S) = -sum_j (s_j/n) log(s_j/n) + (n0/n) log n,
           H(S,T) likewise over n_ij (+ the same singleton term), I = H(S) + H(T) - H(S,T),
           split = I / H(S),  merge = I / H(T),  F = 2 I / (H(S) + H(T))

(alpha = 0.5 in the paper's V_alpha; Fiji's "precision" I / H(T) is our merge score, its
"recall" I / H(S) our split score, and its F their harmonic mean, 2 I / (H(S) + H(T))). A split
lowers the split score, a merge the merge score; a perfect segmentation scores 1. Degenerate
cases: no truth cell pixel at all gives F = 1 (nothing to get wrong; Fiji divides by n = 0);
H(S) = H(T) = 0 (one segment each, no singletons: a perfect answer) gives V_info = 1, where
Fiji returns 0; one of them 0 gives V_info = 0, as in Fiji.

Thinning the proposal (`thin_boundaries`; Fiji utils.WatershedTransform2D with connectivity 4,
the Vincent-Soille flooding watershed). Its input is the binary boundary image itself
(`prob <= t` = 255, cell = 0), no probabilities and no distance map: at level 0 the catchment
basins are the 4-connected components of the cells; at level 255 every boundary pixel is
flooded breadth-first from them (first in, first out). The queue starts with the boundary
pixels next to a basin in column-major order (x outer, y inner: Fiji's pixel list), a popped
pixel queues its unqueued boundary neighbours in the order left, up, right, down, and takes the
label of its labelled 4-neighbours if they agree; if they disagree, or it touches only dam
pixels, it becomes a dam (0), the watershed line. Dams queue their neighbours too. So the basins
are the proposal's cell components grown into their boundary, separated by dams that no two
basins cross (4-neighbours). Without any cell pixel (every pixel boundary, e.g. t = 1.0) the
whole image is one basin, as in Fiji. The queue order decides where a dam lands when two fronts
meet on a tie; it is Fiji's, so dams land where Fiji puts them (tests/test_metrics.py checks
`_flood` against the Vincent-Soille procedure written out step by step). Another flat
watershed (scikit-image's `watershed(zeros, markers, connectivity=1, watershed_line=True)`,
say) moves dams by a pixel here and there, and V_rand / V_info by up to about 1e-3 on an
ISBI slice.

Aggregation over a stack (`isbi_scores`). Per slice, each score is maximised over the
thresholds on its own. For the whole stack, as the Fiji scripts do: pixel error and Rand
error pool the counts (tp, fp, fn; the pair sums A, T, S) of all slices at each threshold and
maximise the F-score of the pooled counts; V_rand and V_info average the per-slice scores at
each threshold (the script's perSliceAverage = true) and take the best threshold for the
average, the lowest threshold on ties. The truth is binarised once (non-zero = cell), which
is Fiji's `label > t` for 0/255 labels at every t. Fiji steps its threshold by adding 0.1, so
its last one is 0.9999999999999999, where a probability of exactly 1.0 still counts as cell;
here the last threshold is 1.0 (no cell pixel left). That changes the t = 1.0 scores of maps
holding exact 1.0 values, and nothing else.

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


def thin_boundaries(cell_mask: np.ndarray) -> np.ndarray:
    """The proposal's segments after thinning its boundary (module doc; Fiji's watershed).

    cell_mask: (H, W) bool, True = cell. The 4-connected components of the cells are flooded
    into the boundary breadth-first (4-connectivity, Fiji's queue order); where two of them
    meet, a dam. Returns int32 labels (H, W) 1.., 0 = dam (the thinned boundary); all 1 when
    there is no cell pixel (the whole boundary is one basin).
    """
    labels = segments(cell_mask)
    if labels.size and labels.max() == 0:
        return np.ones_like(labels)
    return _flood(np.ascontiguousarray(labels))


_MASK, _QUEUED, _DAM = -2, -3, 0  # boundary pixel waiting / in the queue / watershed line


@njit(cache=True)
def _flood(labels):
    """Flood the boundary pixels (0) of labels (H, W) int32 from the basins (> 0), in place.

    Breadth-first (FIFO) in Fiji's order: the queue starts with the boundary pixels next to a
    basin, column by column (x outer, y inner); a popped pixel looks at its 4-neighbours left,
    up, right, down: it takes the one label among them, becomes a dam if there are two or
    more (or none, only dams), and queues its neighbours still waiting, dam or not.
    """
    H, W = labels.shape
    lab = labels.ravel()
    queue = np.empty(H * W, np.int64)
    head = tail = 0
    for i in range(H * W):
        if lab[i] == 0:
            lab[i] = _MASK
    nbr = np.empty(4, np.int64)
    for x in range(W):
        for y in range(H):
            i = y * W + x
            if lab[i] == _MASK and ((x > 0 and lab[i - 1] > 0) or (y > 0 and lab[i - W] > 0)
                                    or (x < W - 1 and lab[i + 1] > 0)
                                    or (y < H - 1 and lab[i + W] > 0)):
                lab[i] = _QUEUED
                queue[tail] = i
                tail += 1
    while head < tail:
        i = queue[head]
        head += 1
        y, x = i // W, i % W
        m = 0
        if x > 0:
            nbr[m] = i - 1
            m += 1
        if y > 0:
            nbr[m] = i - W
            m += 1
        if x < W - 1:
            nbr[m] = i + 1
            m += 1
        if y < H - 1:
            nbr[m] = i + W
            m += 1
        found = 0
        clash = False
        for a in range(m):
            j = nbr[a]
            v = lab[j]
            if v > 0:
                if found == 0:
                    found = v
                elif v != found:
                    clash = True
            elif v == _MASK:
                lab[j] = _QUEUED
                queue[tail] = j
                tail += 1
        lab[i] = _DAM if clash or found == 0 else found
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
    return _info_from(_contingency(truth_seg, pred_seg))


def _info_from(c: _Contingency) -> Scores:
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
    v_rand, v_info: Scores after thinning the proposal's boundaries (never the truth's).
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
    truth_seg = segments(truth)  # never thinned: its boundary pixels do not count
    pixel, rand, v_rand, v_info = [], [], [], []
    for th in thresholds:
        cell = prob > th
        tp = float((cell & truth).sum())
        pixel.append((tp, float((cell & ~truth).sum()), float((~cell & truth).sum())))
        rand.append(_rand_sums(_contingency(truth_seg, segments(cell))))
        if thinned:
            c = _contingency(truth_seg, thin_boundaries(cell))
            v_rand.append(_rand_from_sums(*_rand_sums(c)))
            v_info.append(_info_from(c))
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
    """V_rand of a slice or stack: the foreground-restricted Rand F-score of the truth's
    components against the proposal with thinned boundaries, at the best threshold."""
    return isbi_scores(cell_prob, truth_cell, thresholds).v_rand


def v_info(cell_prob: np.ndarray, truth_cell: np.ndarray, thresholds=THRESHOLDS) -> float:
    """V_info: as `v_rand` with the foreground-restricted information-theoretic F-score."""
    return isbi_scores(cell_prob, truth_cell, thresholds).v_info
