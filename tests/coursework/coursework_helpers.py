"""Shared helpers of the coursework tests: make copies, plant code in a region."""

from __future__ import annotations

import re
from pathlib import Path

from minunet.coursework import make

ROOT = Path(__file__).resolve().parents[2]
OPS_FILE = {"conv2d": "conv.py", "upconv2x2": "upconv.py", "maxpool2x2": "pool.py",
            "relu": "relu.py", "center_crop": "crop.py", "concat": "crop.py",
            "softmax_cross_entropy": "softmax.py", "dropout": "dropout.py",
            "conv2d_general": "conv_general.py", "batchnorm2d": "norm.py"}


def make_copy(dest: Path, ops=None, part="both", teacher: Path | None = None):
    """A student copy of this checkout at dest (and the teacher bundle); returns the Plan."""
    p = make.plan(ROOT, ops, part, seed=0, hidden_seed=1)
    make.write_copy(ROOT, p, dest)
    if teacher is not None:
        make.write_teacher(ROOT, p, teacher)
    return p


def plant(copy: Path, region: str, code: str) -> None:
    """Replace the stub of `region` in a student copy by `code` (its lines, unindented)."""
    path = copy / "minunet" / "ops" / OPS_FILE[region.split(".")[0]]
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, s in enumerate(lines) if f"# TODO({region})" in s)
    indent = re.match(r"\s*", lines[start]).group(0)
    end = next(i for i in range(start + 1, len(lines)) if lines[i] == f"{indent})\n")
    body = [indent + s + "\n" for s in code.strip("\n").splitlines()]
    lines[start : end + 1] = body
    path.write_text("".join(lines))
