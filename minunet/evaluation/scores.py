"""Scores of saved predictions against labels: reading probability maps and label images,
pairing them by name, and the tables of `python -m minunet.evaluate` (pixel-wise, ISBI 2012,
per class, per object). The library half of that command; the metrics themselves are in
minunet/evaluation/metrics.py and minunet/evaluation/objects.py.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from minunet.data.loaders import DataError, pair_by_stem, read_array
from minunet.evaluation import metrics, objects
from minunet.files import atomic_write

COLUMNS = ("slice", "pixel_error", "rand_error", "v_rand", "v_info", "pixel_accuracy",
           "iou_cell", "iou_boundary", "mean_iou", "dice_cell")


OBJECT_COLUMNS = ("slice", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
                  "mean_matched_iou", "ap_50", "ap_75", "ap", "seg")


COUNT_COLUMNS = ("n_true", "n_pred", "tp", "fp", "fn")  # integers in the table and the CSV


def pair_inputs(pred: str, labels: str) -> list[tuple[str, Path, Path]]:
    """(name, prediction file, label file) pairs: two files, or two folders paired by stem."""
    p, lab = Path(pred), Path(labels)
    for what, path in (("PRED", p), ("LABELS", lab)):
        if not path.exists():
            raise DataError(f"{what} {path} does not exist")
    if p.is_file() and lab.is_file():
        return [(p.stem, p, lab)]
    if p.is_dir() and lab.is_dir():
        return pair_by_stem(p, lab, "predictions", "labels")
    kinds = f"PRED is a {'folder' if p.is_dir() else 'file'}, LABELS a " \
            f"{'folder' if lab.is_dir() else 'file'}"
    raise DataError(f"{kinds}: give two files (images or stacks, paired page by page) or two "
                    "folders (paired by file name)")


def read_pages(path: Path) -> np.ndarray:
    """A file as gray pages (N, H, W): an image gives one page, a TIFF stack (N, H, W) N pages."""
    a = read_array(path, mask=True)  # DataError naming the file if it cannot be decoded
    if a.ndim == 3 and a.shape[-1] in (3, 4) and (path.suffix.lower() == ".png"
                                                  or a.shape[0] > 4):
        rgb = a[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise DataError(f"{path} is a colour image; probability maps and labels must be gray")
        a = rgb[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataError(f"{path}: expected a gray image or a stack (N, H, W), got shape {a.shape}")
    return a


def to_prob(a: np.ndarray, name: str) -> np.ndarray:
    """Stored probability map -> float64 in [0, 1] (integers divided by their dtype's maximum)."""
    if a.dtype == bool:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float64) / float(np.iinfo(a.dtype).max)
    p = a.astype(np.float64)
    if p.size and (np.isnan(p).any() or p.min() < -1e-5 or p.max() > 1 + 1e-5):
        raise DataError(f"{name}: float probabilities must lie in [0, 1], found "
                        f"[{np.nanmin(p):g}, {np.nanmax(p):g}]")
    return np.clip(p, 0.0, 1.0)  # float32 rounding may overshoot 1 by an ulp


def to_truth(a: np.ndarray, name: str) -> np.ndarray:
    """Stored label -> bool (True = cell); labels must be binary (0 and one other value)."""
    try:
        return metrics.binary_truth(a)
    except ValueError as e:
        raise DataError(f"{name}: {e}") from e


def load_slices(pred: str, labels: str):
    """[(slice name, cell probability (H, W) float64, truth (H, W) bool)] of the paired inputs."""
    out = []
    for name, fp, fl in pair_inputs(pred, labels):
        pp, pl = read_pages(fp), read_pages(fl)
        if pp.shape != pl.shape:
            hint = ("; is PRED the K-class probability TIFF of a K-class model? score its "
                    "DIR/mask with --classes" if pl.shape[0] == 1 and pp.shape[0] > 1 else "")
            raise DataError(f"{fp.name} (pages, H, W = {pp.shape}) and {fl.name} ({pl.shape}) "
                            "differ in shape; predictions and labels must match pixel for pixel"
                            + hint)
        for k in range(pp.shape[0]):
            slice_name = f"{name}[{k}]" if pp.shape[0] > 1 else name
            out.append((slice_name, to_prob(pp[k], fp.name), to_truth(pl[k], fl.name)))
    return out


def to_labels(a: np.ndarray, name: str, kind: str) -> np.ndarray:
    """A stored label page -> int64 (H, W): instances (`objects.as_instances`: a binary mask
    becomes its 4-connected components) or class indices (0/255 masks become 0/1)."""
    if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer)):
        if not np.array_equal(a, np.round(a)):
            raise DataError(f"{name}: {kind} must be integers, found values like "
                            f"{a.ravel()[np.flatnonzero(a.ravel() != np.round(a.ravel()))[0]]:g}"
                            "; a probability map? turn it into labels with python -m "
                            "minunet.predict --instances, or score it without --" + kind)
    if a.size and a.min() < 0:
        raise DataError(f"{name}: {kind} must be >= 0, found {a.min()}")
    if kind == "instances":
        return objects.as_instances(a)
    a = a.astype(np.int64)
    if set(np.unique(a).tolist()) <= {0, 255}:
        a = (a == 255).astype(np.int64)  # a binary mask: classes 0 and 1
    return a


def load_label_slices(pred: str, labels: str, kind: str):
    """[(slice name, predicted labels (H, W) int64, true labels (H, W) int64)] of the paired
    inputs; kind 'instances' or 'classes' (`to_labels`)."""
    out = []
    for name, fp, fl in pair_inputs(pred, labels):
        pp, pl = read_pages(fp), read_pages(fl)
        if pp.shape != pl.shape:
            raise DataError(f"{fp.name} (pages, H, W = {pp.shape}) and {fl.name} ({pl.shape}) "
                            "differ in shape; predictions and labels must match pixel for pixel")
        for k in range(pp.shape[0]):
            slice_name = f"{name}[{k}]" if pp.shape[0] > 1 else name
            out.append((slice_name, to_labels(pp[k], fp.name, kind),
                        to_labels(pl[k], fl.name, kind)))
    return out


def evaluate_objects(slices, progress: bool = False) -> list[dict]:
    """Object scores (minunet/evaluation/objects.py) per slice and pooled over all ('all')."""
    from tqdm import tqdm

    rows, counts = [], []
    for name, pred, truth in tqdm(slices, desc="evaluate", unit="slice",
                                  disable=None if progress else True):
        c = objects.object_counts(truth, pred)
        counts.append(c)
        rows.append({"slice": name, **objects.object_scores(c)})
    rows.append({"slice": "all", **objects.object_scores(counts)})
    return rows


def evaluate_classes(slices) -> list[dict]:
    """Pixel accuracy, mean IoU, and IoU and Dice of each class, per slice and over all."""
    k = max(2, 1 + max(max(int(p.max()), int(t.max())) for _, p, t in slices))
    rows, cms = [], []
    for name, pred, truth in slices:
        cms.append(metrics.confusion_matrix(pred, truth, k))
        rows.append({"slice": name, **_class_row(cms[-1])})
    rows.append({"slice": "all", **_class_row(np.sum(cms, axis=0))})
    return rows


def _iou_dice(cm: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Pixel accuracy, per-class IoU and Dice (NaN for a class in neither map) and their mean
    IoU, from a (K, K) confusion matrix (row truth, column prediction)."""
    cm = cm.astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    total = cm.sum(0) + cm.sum(1)
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    dice = np.where(total > 0, 2 * inter / np.where(total > 0, total, 1), np.nan)
    mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else 1.0
    return inter.sum() / max(cm.sum(), 1.0), iou, dice, mean_iou


def _class_row(cm: np.ndarray) -> dict:
    """Scores of a (K, K) confusion matrix: accuracy, mean IoU, IoU and Dice per class."""
    accuracy, iou, dice, mean_iou = _iou_dice(cm)
    row = {"pixel_accuracy": accuracy, "mean_iou": mean_iou}
    row |= {f"iou_{c}": float(v) for c, v in enumerate(iou)}
    return row | {f"dice_{c}": float(v) for c, v in enumerate(dice)}


def _pixel_row(cm: np.ndarray) -> dict:
    """Pixel accuracy, IoU and Dice of a 2x2 confusion matrix (row truth, column prediction)."""
    accuracy, iou, dice, mean_iou = _iou_dice(cm)
    return {"pixel_accuracy": accuracy, "iou_cell": iou[1], "iou_boundary": iou[0],
            "mean_iou": mean_iou, "dice_cell": dice[1]}


def evaluate(slices, threshold: float = 0.5, progress: bool = False) -> list[dict]:
    """One row per slice plus the aggregate row 'all' (see the module doc)."""
    from tqdm import tqdm

    rows, counts, cms = [], [], []
    for name, prob, truth in tqdm(slices, desc="evaluate", unit="slice",
                                  disable=None if progress else True):
        c = metrics.slice_counts(prob, truth)
        cm = metrics.confusion_matrix((prob > threshold).astype(np.int64),
                                      truth.astype(np.int64), 2)
        counts.append(c)
        cms.append(cm)
        rows.append({"slice": name, **metrics.scores_of([c]).as_dict(), **_pixel_row(cm)})
    rows.append({"slice": "all", **metrics.scores_of(counts).as_dict(),
                 **_pixel_row(np.sum(cms, axis=0))})
    return rows


def format_table(rows: list[dict], columns=COLUMNS) -> str:
    width = max(len("slice"), *(len(r["slice"]) for r in rows))
    cells = [max(15 if columns == COLUMNS else 10, len(c) + 1) for c in columns[1:]]
    head = f"{'slice':<{width}}" + "".join(
        f"{c:>{n}}" for c, n in zip(columns[1:], cells, strict=True))
    lines = [head]
    for r in rows:
        if r["slice"] == "all" and len(rows) > 1:
            lines.append("-" * len(head))
        lines.append(f"{r['slice']:<{width}}" + "".join(
            f"{_fmt(r[c], c):>{n}}" for c, n in zip(columns[1:], cells, strict=True)))
    return "\n".join(lines)


def _fmt(v, column: str = "") -> str:
    if column in COUNT_COLUMNS:
        return str(int(v))
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.6f}"


def write_csv(rows: list[dict], path: Path, columns=COLUMNS) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (r[c] if c == "slice" else _fmt(r[c], c)) for c in columns})
    data = buf.getvalue().encode()
    return atomic_write(Path(path), lambda f: f.write(data))
