"""Score predicted probability maps against labels: `python -m minunet.evaluate PRED LABELS`.

PRED and LABELS are both single files (a PNG/TIFF image, or a multi-page TIFF stack paired page
by page) or both folders (files paired by name without extension; each pair may itself be a
stack). Predictions are probabilities of 'cell': 8-bit (0..255 = 0..1), 16-bit, or float in
[0, 1], as `python -m minunet.predict` writes them in DIR/prob. Labels are binary with the ISBI
convention: 255 (or 1) = cell, 0 = boundary.

Prints one row per slice and an aggregate row ('all'), and writes them as CSV (--csv):

    pixel_error, rand_error, v_rand, v_info   the ISBI 2012 scores (minunet/metrics.py), each at
                                              its best threshold of 0.0, 0.1, ..., 1.0; the 'all'
                                              row pools / averages slices as the challenge did
    pixel_accuracy, iou_cell, iou_boundary,   pixel-wise, at --threshold (default 0.5); 'all'
    mean_iou, dice_cell                       counts every pixel of the stack
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import numpy as np

from . import metrics
from .data.loaders import DataError, pair_by_stem, read_array
from .files import atomic_write

COLUMNS = ("slice", "pixel_error", "rand_error", "v_rand", "v_info", "pixel_accuracy",
           "iou_cell", "iou_boundary", "mean_iou", "dice_cell")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minunet.evaluate",
        description="ISBI 2012 scores (pixel error, Rand error, V_rand, V_info) and pixel "
                    "accuracy / IoU / Dice of probability maps against binary labels.")
    p.add_argument("pred", metavar="PRED", help="probability map file, stack, or folder")
    p.add_argument("labels", metavar="LABELS", help="label file, stack, or folder (255 = cell)")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the table (one row per slice and 'all') to this CSV file")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="cell threshold for pixel accuracy, IoU and Dice (default 0.5)")
    return p


# ----------------------------------------------------------------------------- reading


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
            raise DataError(f"{fp.name} (pages, H, W = {pp.shape}) and {fl.name} ({pl.shape}) "
                            "differ in shape; predictions and labels must match pixel for pixel")
        for k in range(pp.shape[0]):
            slice_name = f"{name}[{k}]" if pp.shape[0] > 1 else name
            out.append((slice_name, to_prob(pp[k], fp.name), to_truth(pl[k], fl.name)))
    return out


# ----------------------------------------------------------------------------- scoring


def _pixel_row(cm: np.ndarray) -> dict:
    """Pixel accuracy, IoU and Dice of a 2x2 confusion matrix (row truth, column prediction)."""
    cm = cm.astype(np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    total = cm.sum(0) + cm.sum(1)
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    dice = np.where(total > 0, 2 * inter / np.where(total > 0, total, 1), np.nan)
    return {"pixel_accuracy": inter.sum() / max(cm.sum(), 1.0), "iou_cell": iou[1],
            "iou_boundary": iou[0], "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any()
            else 1.0, "dice_cell": dice[1]}


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


def format_table(rows: list[dict]) -> str:
    width = max(len("slice"), *(len(r["slice"]) for r in rows))
    head = f"{'slice':<{width}}" + "".join(f"{c:>15}" for c in COLUMNS[1:])
    lines = [head]
    for r in rows:
        if r["slice"] == "all" and len(rows) > 1:
            lines.append("-" * len(head))
        lines.append(f"{r['slice']:<{width}}" + "".join(
            f"{_fmt(r[c]):>15}" for c in COLUMNS[1:]))
    return "\n".join(lines)


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.6f}"


def write_csv(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (r[c] if c == "slice" else _fmt(r[c])) for c in COLUMNS})
    data = buf.getvalue().encode()
    return atomic_write(Path(path), lambda f: f.write(data))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0.0 <= args.threshold <= 1.0:
            raise DataError(f"--threshold must lie in [0, 1], got {args.threshold}")
        slices = load_slices(args.pred, args.labels)
        rows = evaluate(slices, args.threshold, progress=True)
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        raise SystemExit(f"error: {e}") from e
    print(format_table(rows))
    if args.csv:
        print(f"wrote {write_csv(rows, Path(args.csv))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
