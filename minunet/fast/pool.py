"""The fast maxpool2x2: the plain op of minunet/ops/pool.py as one pass of a twin.

Same names, signatures, cache (ops.pool.MaxPool2x2Cache), tie rule
(docs/DESIGN.md, "Max-pool ties") and numbers as the plain op; read that file
first. The trick, and what it buys: the plain op's reshape, transpose, argmax
and take/put_along_axis make several passes and temporaries of 4x the output;
here one Numba loop (backend/cpu.py) or one CUDA kernel (kernels/pool.cu) reads
each window once and writes out and arg-max together, on every core (plane
blocks of `backend.parallel_for`).
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_dout, check_maxpool2x2
from ..ops.pool import MaxPool2x2Cache


def maxpool2x2_forward(x):
    """2x2 max-pool, stride 2.

    x: (N, C, H, W) with H and W even. Returns out (N, C, H/2, W/2) and a MaxPool2x2Cache.
    """
    check_maxpool2x2(x)
    out, arg = backend.maxpool2x2_forward(x)  # (N, C, H/2, W/2) each; arg uint8 2*i + j
    return out, MaxPool2x2Cache(arg)


def maxpool2x2_backward(dout, cache):
    """dout: (N, C, H/2, W/2) -> dx (N, C, H, W); zero except at each window's arg-max."""
    check_dout("maxpool2x2", dout, cache.arg.shape)
    return backend.maxpool2x2_backward(dout, cache.arg)
