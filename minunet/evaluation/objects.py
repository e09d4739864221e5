"""Object-level scores of instance segmentations: matching, precision/recall/F1, AP, SEG.

Pixel scores (minunet/evaluation/metrics.py) say how many pixels are right; a microscopist counts
cells. Here both the truth and the prediction are instance label images (H, W) of integers: 0 is the
background, every other value one object (ids need not be consecutive). A binary mask becomes
instances through its 4-connected components (`as_instances`), as the ISBI cells are in metrics.py.

For a true object G and a predicted object P, IoU(G, P) = |G & P| / |G | P|.

Matching at an IoU threshold t >= 0.5: pairs with IoU >= t, at most one partner per object,
as many pairs as possible (a maximum matching; scipy's linear_sum_assignment). For t > 0.5 a
pair is unique anyway (two disjoint predictions cannot both cover more than half of the union
with one true object), so this only decides ties at exactly 0.5. Then

    TP = matched pairs, FP = predicted objects left over, FN = true objects left over
    precision = TP / (TP + FP),  recall = TP / (TP + FN),  F1 = 2 TP / (2 TP + FP + FN)
    mean matched IoU = the mean IoU of the pairs matched at t = 0.5

Average precision over IoU thresholds 0.5, 0.55, ..., 0.95 (`IOU_THRESHOLDS`), as the 2018 Data
Science Bowl scored nuclei and as Cellpose and StarDist report it for objects without
confidence scores: AP(t) = TP_t / (TP_t + FP_t + FN_t) at each threshold, and AP = its mean
over the ten thresholds. (COCO's AP needs a confidence per object to rank; a label image has
none.)

SEG, the Cell Tracking Challenge's segmentation measure (Ulman et al. 2017, Nat. Methods 14:1141,
doi:10.1038/nmeth.4473; the challenge's SEGMeasure): a reference (true) object R is matched by
the segmented object S with |R & S| > 0.5 |R| (at most one S can cover more than half of R); its
score is the Jaccard index |R & S| / |R | S|, or 0 when no S covers more than half of R. SEG is
the mean over the reference objects. False positives do not lower SEG; only F1 and AP see them.

Aggregating several images (`object_scores` of a list): TP, FP and FN are summed over the images
before the ratios are taken; mean matched IoU averages all matched pairs; SEG averages all
reference objects of all images, as the challenge does over the frames of a sequence.

Conventions for empty images: when neither the truth nor the prediction holds an object, there is
nothing to get wrong and precision, recall, F1, AP and mean matched IoU are 1; a ratio whose
denominator is 0 otherwise (no prediction at all: precision) is 0. SEG without any reference
object is undefined: NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5, 0.55, ..., 0.95
_FOUR = ndimage.generate_binary_structure(2, 1)


def as_instances(labels: np.ndarray) -> np.ndarray:
    """Instance ids (H, W) int64 of a label image: kept as they are when it holds two or more
    object ids; the 4-connected components of the foreground when it is binary (one non-zero
    value at most, e.g. a 0/255 mask)."""
    a = np.asarray(labels)
    if a.ndim != 2:
        raise ValueError(f"instance labels must be a 2-D image, got shape {a.shape}")
    if a.dtype == bool or np.unique(a[a != 0]).size <= 1:
        return ndimage.label(a != 0, structure=_FOUR)[0].astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.array_equal(a, np.round(a)):
            raise ValueError("instance labels must be integers")
    if a.min() < 0:
        raise ValueError(f"instance labels must be >= 0, found {a.min()}")
    return a.astype(np.int64)


class Overlaps(NamedTuple):
    """Pixel counts of the true objects, the predicted objects and their intersections."""

    true_sizes: np.ndarray  # (n_true,) pixels of each true object
    pred_sizes: np.ndarray  # (n_pred,) pixels of each predicted object
    inter: np.ndarray  # (n_true, n_pred) pixels in both


def overlaps(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Sizes and intersections of the objects of two instance images (H, W) (0 = background)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    t = np.unique(truth.ravel(), return_inverse=True)  # (ids, index of each pixel's id)
    p = np.unique(pred.ravel(), return_inverse=True)
    ti, pi = t[1].ravel(), p[1].ravel()
    nt, np_ = t[0].size, p[0].size
    table = np.bincount(ti * np_ + pi, minlength=nt * np_).reshape(nt, np_)  # (ids_t, ids_p)
    table = table[t[0] != 0][:, p[0] != 0]  # drop the background row and column
    return Overlaps(np.bincount(ti, minlength=nt)[t[0] != 0],
                    np.bincount(pi, minlength=np_)[p[0] != 0], table)


def iou_matrix(ov: Overlaps) -> np.ndarray:
    """(n_true, n_pred) IoU of every true and predicted object."""
    union = ov.true_sizes[:, None] + ov.pred_sizes[None, :] - ov.inter
    return np.where(union > 0, ov.inter / np.maximum(union, 1), 0.0)


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """A maximum matching of true (rows) and predicted (columns) objects among the pairs with
    IoU >= threshold; ties between matchings of equal size go to the larger total IoU.
    Returns the matched row and column indices."""
    from scipy.optimize import linear_sum_assignment

    ok = iou >= threshold
    if not ok.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.flatnonzero(ok.any(1)), np.flatnonzero(ok.any(0))
    sub_ok, sub_iou = ok[np.ix_(rows, cols)], iou[np.ix_(rows, cols)]
    # one pair is worth more than any sum of IoUs, so the matching is maximum first
    weight = np.where(sub_ok, (min(sub_ok.shape) + 1) + sub_iou, 0.0)
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = sub_ok[r, c]
    return rows[r[keep]], cols[c[keep]]


class ObjectCounts(NamedTuple):
    """What one image contributes to the scores; a list of them pools (`object_scores`)."""

    n_true: int
    n_pred: int
    tp: np.ndarray  # (len(thresholds),) matched pairs at each IoU threshold
    matched_iou: np.ndarray  # IoUs of the pairs matched at the first threshold (0.5)
    seg: np.ndarray  # (n_true,) Jaccard index of each reference object (0 if not matched)
    thresholds: tuple


def seg_jaccard(ov: Overlaps) -> np.ndarray:
    """The Cell Tracking Challenge's per-reference-object score (module doc): the Jaccard
    index with the segmented object covering more than half of it, else 0. (n_true,)"""
    out = np.zeros(ov.true_sizes.size)
    if ov.inter.size == 0:
        return out
    best = ov.inter.argmax(1)  # the only candidate: the one covering the most of R
    cover = ov.inter[np.arange(ov.inter.shape[0]), best]
    hit = 2 * cover > ov.true_sizes  # |R & S| > 0.5 |R|, in integers
    union = ov.true_sizes + ov.pred_sizes[best] - cover
    out[hit] = cover[hit] / union[hit]
    return out


def object_counts(truth: np.ndarray, pred: np.ndarray,
                  thresholds=IOU_THRESHOLDS) -> ObjectCounts:
    """The matches of two instance images (H, W) at each IoU threshold, the IoUs matched at
    the first, and the SEG score of each reference object (module doc)."""
    ov = overlaps(as_instances(truth), as_instances(pred))
    iou = iou_matrix(ov)
    tp, first = [], None
    for t in thresholds:
        r, c = match(iou, t)
        tp.append(r.size)
        if first is None:
            first = iou[r, c]
    return ObjectCounts(int(ov.true_sizes.size), int(ov.pred_sizes.size), np.array(tp),
                        np.asarray(first, np.float64), seg_jaccard(ov), tuple(thresholds))


def _ratio(a: float, b: float, empty: bool) -> float:
    return float(a / b) if b > 0 else (1.0 if empty else 0.0)


def object_scores(counts) -> dict:
    """Scores of one image's ObjectCounts, or of a list of them pooled (module doc):
    n_true, n_pred, tp, fp, fn (at IoU 0.5), precision, recall, f1, mean_matched_iou,
    ap_50, ap_75 (where 0.75 is a threshold), ap (mean over all thresholds), seg."""
    if isinstance(counts, ObjectCounts):
        counts = [counts]
    ths = counts[0].thresholds
    n_true = sum(c.n_true for c in counts)
    n_pred = sum(c.n_pred for c in counts)
    tp = np.sum([c.tp for c in counts], axis=0)  # (T,)
    empty = n_true == 0 and n_pred == 0
    ap = np.array([_ratio(k, n_true + n_pred - k, empty) for k in tp])  # TP / (TP + FP + FN)
    matched = np.concatenate([c.matched_iou for c in counts])
    seg = np.concatenate([c.seg for c in counts])
    out = {"n_true": n_true, "n_pred": n_pred, "tp": int(tp[0]), "fp": int(n_pred - tp[0]),
           "fn": int(n_true - tp[0]),
           "precision": _ratio(tp[0], n_pred, empty), "recall": _ratio(tp[0], n_true, empty),
           "f1": _ratio(2 * tp[0], n_true + n_pred, empty),
           "mean_matched_iou": float(matched.mean()) if matched.size else (1.0 if empty else 0.0),
           "ap_50": float(ap[0])}
    if 0.75 in ths:
        out["ap_75"] = float(ap[ths.index(0.75)])
    out["ap"] = float(ap.mean())
    out["seg"] = float(seg.mean()) if seg.size else float("nan")
    return out
