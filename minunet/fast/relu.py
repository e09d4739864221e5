"""The fast ReLU: the plain op of minunet/ops/relu.py with its backward as one twin pass.

Same names, signatures, cache (ops.relu.ReluCache) and numbers as the plain op.
The trick, and what it buys: NumPy's `where(out > 0, dout, 0)` makes a boolean
temporary and a second pass; the twin (backend/cpu.py relu_backward, a Numba
loop over row slices that the compiler vectorises; kernels/relu.cu on the GPU)
reads out and dout once and writes dx once. (The U-Net's 3x3 layers fuse their
ReLU into the conv instead: see fast/conv.py; this op serves the optional ReLU
after the up-convolution.)
"""

from __future__ import annotations

from .. import backend
from ..ops._check import check_dout
from ..ops.relu import ReluCache, relu_forward

__all__ = ["ReluCache", "relu_forward", "relu_backward"]


def relu_backward(dout, cache):
    """dout: the output's shape. Returns dx = dout where out > 0, else 0."""
    check_dout("relu", dout, cache.out.shape)
    xp = backend.xp_of(dout, cache.out)
    return backend.relu_backward(xp.ascontiguousarray(dout), xp.ascontiguousarray(cache.out))
