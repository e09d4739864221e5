"""python -m minunet.instances: instance labels from saved probability maps (argument parsing plus
calls to minunet/inference/instances.py and minunet/inference/outputs.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from minunet.data.loaders import DataError
from minunet.evaluation.scores import read_pages, to_prob
from minunet.inference.instances import THRESHOLD, add_instance_options
from minunet.inference.outputs import check_instance_options, find_inputs, save_instances


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minunet.instances",
        description="Instance labels from saved cell probability maps (predict's DIR/prob, or "
                    "any map of P(cell)), without the network: label them again with other "
                    "settings. Writes OUT/instances/STEM.tif (16- or 32-bit, one id per cell) "
                    "and OUT/instances_overlay/.")
    p.add_argument("inputs", nargs="+", metavar="PROB",
                   help="probability maps: 8-bit (0..255 = 0..1), 16-bit or float TIFF in "
                        "[0, 1], single images or stacks, or folders of them")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"cell probability above which a pixel is cell (default {THRESHOLD})")
    add_instance_options(p)
    return p


def check_probabilities(raw, pages: list, threshold: float, name: str) -> None:
    """DataError if an image that is not all zero has no pixel above `threshold` once read as
    probabilities: an integer label or gray image (ids 1..N of a 16-bit image are below 0.001)
    would give 0 cells without a word. raw: the stored pages; pages: them as probabilities."""
    for a, p in zip(raw, pages, strict=True):
        if a.any() and not (p > threshold).any():
            hint = (f"; an integer image counts as probability value / {np.iinfo(a.dtype).max}: "
                    "is it a label image? instances takes probability maps (predict's prob/ "
                    "output, floats in [0, 1] or 8-/16-bit scaled to the type's maximum)"
                    if np.issubdtype(a.dtype, np.integer) else "")
            raise DataError(f"{name}: no pixel is above --threshold {threshold} (the highest is "
                            f"{p.max():.4g}), so there are no cells{hint}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not 0.0 <= args.threshold <= 1.0:
            raise DataError(f"--threshold must lie in [0, 1], got {args.threshold}")
        check_instance_options(args)
        files = find_inputs(args.inputs)
        for path in files:
            raw = read_pages(path)
            pages = [to_prob(p, path.name) for p in raw]  # (H, W) in [0, 1]
            check_probabilities(raw, pages, args.threshold, path.name)
            save_instances(Path(args.out), path.stem, len(pages) > 1, pages, pages, args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote the instances of {len(files)} file(s) to {args.out}/instances and "
          f"{args.out}/instances_overlay", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
