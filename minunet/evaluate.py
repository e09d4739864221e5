"""Score predicted probability maps against labels: `python -m minunet.evaluate PRED LABELS`.

PRED and LABELS are both single files (a PNG/TIFF image, or a multi-page TIFF stack paired page
by page) or both folders (files paired by name without extension; each pair may itself be a
stack). Predictions are probabilities of 'cell': 8-bit (0..255 = 0..1), 16-bit, or float in
[0, 1], as `python -m minunet.predict` writes them in DIR/prob. Labels are binary with the ISBI
convention: 255 (or 1) = cell, 0 = boundary.

Prints one row per slice and an aggregate row ('all'), and writes them as CSV (--csv):

    pixel_error, rand_error, v_rand, v_info   the ISBI 2012 scores (evaluation/metrics.py), each at
                                              its best threshold of 0.0, 0.1, ..., 1.0; the 'all'
                                              row pools / averages slices as the challenge did
    pixel_accuracy, iou_cell, iou_boundary,   pixel-wise, at --threshold (default 0.5); 'all'
    mean_iou, dice_cell                       counts every pixel of the stack

--instances scores objects instead (minunet/evaluation/objects.py). PRED and LABELS are then
instance label images (0 = background, one id per cell; `predict --instances` writes them in
DIR/instances), or binary masks, whose 4-connected components are taken as the cells (so DIR/mask
and ISBI labels work too). Columns (matching at IoU >= 0.5; 'all' pools every slice's objects):

    n_true, n_pred, tp, fp, fn                objects in the truth and the prediction; matched
                                              pairs, unmatched predictions, unmatched true cells
    precision, recall, f1, mean_matched_iou   of the matching; the mean IoU of matched pairs
    ap_50, ap_75, ap                          TP / (TP + FP + FN) at IoU 0.5, 0.75, and its mean
                                              over 0.5, 0.55, ..., 0.95
    seg                                       the Cell Tracking Challenge's SEG

--classes scores K-class masks (predict's DIR/mask of a K-class model, class indices 0..K-1;
a 0/255 mask counts as classes 0/1) against class-index labels: pixel_accuracy, mean_iou, and
iou_k and dice_k for every class k.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minunet.data.loaders import DataError
from minunet.evaluation.scores import (
    COLUMNS,
    OBJECT_COLUMNS,
    evaluate,
    evaluate_classes,
    evaluate_objects,
    format_table,
    load_label_slices,
    load_slices,
    write_csv,
)
from minunet.exits import usage_error


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
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--instances", action="store_true",
                      help="object scores: PRED and LABELS are instance label images (or binary "
                           "masks, labelled by their 4-connected components): precision, recall "
                           "and F1 at IoU >= 0.5, mean matched IoU, AP over IoU 0.5:0.95, SEG")
    kind.add_argument("--classes", action="store_true",
                      help="K-class scores: PRED and LABELS are class-index masks (predict's "
                           "DIR/mask of a K-class model): pixel accuracy, IoU and Dice per class")
    return p


# ----------------------------------------------------------------------------- reading


# ----------------------------------------------------------------------------- scoring


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0.0 <= args.threshold <= 1.0:
            raise DataError(f"--threshold must lie in [0, 1], got {args.threshold}")
        if args.instances:
            columns = OBJECT_COLUMNS
            rows = evaluate_objects(load_label_slices(args.pred, args.labels, "instances"),
                                    progress=True)
        elif args.classes:
            slices = load_label_slices(args.pred, args.labels, "classes")
            rows = evaluate_classes(slices)
            columns = ("slice", *(k for k in rows[-1] if k != "slice"))
        else:
            columns = COLUMNS
            slices = load_slices(args.pred, args.labels)
            rows = evaluate(slices, args.threshold, progress=True)
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        raise usage_error(e) from e
    print(format_table(rows, columns))
    if args.csv:
        print(f"wrote {write_csv(rows, Path(args.csv), columns)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
