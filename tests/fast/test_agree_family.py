"""The two doors agree on the U-Net family's fast ops (issue 25): minunet/fast vs minunet/ops.

float64 to 1e-12 relative, float32 to 1e-5 relative by norm (as tests/fast/test_agree.py), per
output, gradient and running statistic; batch 1 and 3, odd sizes, strides, paddings, 1 and 3
CPU workers, tiny row chunks. On a machine with a GPU the same runs on CuPy (`xp`).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_agree import agree

from minunet.backend import chunks, threads
from minunet.fast import conv_general as fast_conv
from minunet.fast import norm as fast_norm
from minunet.fast import resample as fast_resample
from minunet.ops import conv_general as plain_conv
from minunet.ops import norm as plain_norm
from minunet.ops import resample as plain_resample

DTYPES = ["float64", "float32"]


@pytest.fixture(params=[(1, None), (3, 1)], ids=["1 worker", "3 workers tiny chunks"])
def cpu_setup(request, monkeypatch):
    """Worker count and chunk size of the fast ops on the CPU (the GPU ignores both)."""
    n, chunk = request.param
    callspec = getattr(request.node, "callspec", None)
    if callspec and callspec.params.get("xp") == "cupy" and request.param != (1, None):
        pytest.skip("the GPU ignores workers and chunks: its case runs once, with '1 worker'")
    monkeypatch.setattr(threads, "n_threads", lambda: n)
    if chunk is not None:
        monkeypatch.setattr(chunks, "CPU_CHUNK_BYTES", chunk)
    return request.param


def normal(xp, rng, dtype, *shape, scale=1.0, shift=0.0):
    return xp.asarray((rng.standard_normal(shape) * scale + shift).astype(dtype))


def compare(xp, rng, dtype, plain, fastm, name, args, kw, n_grads):
    """Forward and backward of `name` on both doors with the same inputs: every output agrees."""
    f_p, b_p = getattr(plain, name + "_forward"), getattr(plain, name + "_backward")
    f_f, b_f = getattr(fastm, name + "_forward"), getattr(fastm, name + "_backward")
    out_p, cache_p = f_p(*args(), **kw)
    out_f, cache_f = f_f(*args(), **kw)
    assert type(cache_p) is type(cache_f), name
    agree(out_f, out_p, dtype, f"{name} forward")
    dout = normal(xp, rng, dtype, *out_p.shape)
    g_p, g_f = b_p(dout, cache_p), b_f(dout, cache_f)
    g_p, g_f = (g if isinstance(g, tuple) else (g,) for g in (g_p, g_f))
    assert len(g_p) == len(g_f) == n_grads
    for i, (a, b) in enumerate(zip(g_f, g_p, strict=True)):
        agree(a, b, dtype, f"{name} backward, gradient {i}")


# --- BatchNorm ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (3, 2, 9, 11), (1, 2, 61, 67), (2, 4, 1, 3)])
def test_batchnorm2d(xp, rng, cpu_setup, dtype, training, shape):
    C = shape[1]
    x = normal(xp, rng, dtype, *shape, scale=2.0, shift=50.0)  # a large mean
    gamma = normal(xp, rng, dtype, C, scale=0.3, shift=1.0)
    beta = normal(xp, rng, dtype, C)
    made = []  # the running buffers of the plain door, then of the fast door

    def args():
        bufs = (xp.full(C, 0.3, dtype=dtype), xp.full(C, 2.0, dtype=dtype),
                xp.asarray(np.array([4], np.int64)))
        made.append(bufs)
        return (x, gamma, beta, *bufs)

    compare(xp, rng, dtype, plain_norm, fast_norm, "batchnorm2d", args,
            dict(training=training), 3)
    (pm, pv, pn), (fm, fv, fn) = made
    agree(fm, pm, dtype, "running_mean")
    agree(fv, pv, dtype, "running_var")
    assert int(fn[0]) == int(pn[0]) == (5 if training else 4)


def test_batchnorm2d_fast_errors_as_plain(rng):
    x = rng.standard_normal((1, 2, 1, 1))
    one, zero = np.ones(2), np.zeros(2)
    with pytest.raises(ValueError, match="more than one value per channel"):
        fast_norm.batchnorm2d_forward(x, one, zero, zero.copy(), one.copy(),
                                      np.array([0], np.int64))
    with pytest.raises(ValueError, match="eval mode before any training"):
        fast_norm.batchnorm2d_forward(x, one, zero, zero.copy(), one.copy(),
                                      np.array([0], np.int64), training=False)


# --- up-sampling ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("factor", [2, 4, 8, 16])
@pytest.mark.parametrize("shape", [(1, 2, 3, 5), (3, 1, 1, 4), (2, 3, 7, 6)])
def test_bilinear_upsample(xp, rng, cpu_setup, dtype, factor, align_corners, shape):
    x = normal(xp, rng, dtype, *shape)
    compare(xp, rng, dtype, plain_resample, fast_resample, "bilinear_upsample", lambda: (x,),
            dict(factor=factor, align_corners=align_corners), 1)


def test_nearest_upsample_is_shared():
    """Nearest by 2 is one copy and one reshaped sum: the plain pair serves both doors."""
    assert fast_resample.nearest_upsample2_forward is plain_resample.nearest_upsample2_forward
    assert fast_resample.nearest_upsample2_backward is plain_resample.nearest_upsample2_backward


# --- convolution with padding, stride and groups ----------------------------------------------

CONV_CASES = [  # (N, Cin, Cout, H, W, k, stride, padding, groups, bias)
    (1, 3, 4, 9, 7, 3, 1, "same", 1, True), (3, 2, 5, 11, 13, 3, 2, 1, 1, True),
    (1, 4, 3, 8, 9, 5, 2, 2, 1, False), (2, 3, 2, 7, 7, 1, 1, 0, 1, True),
    (1, 2, 3, 9, 6, 1, 2, 0, 1, False), (1, 3, 2, 10, 9, 4, 3, 1, 1, True),
    (1, 5, 5, 9, 11, 3, 1, 1, 5, True), (3, 4, 4, 8, 7, 3, 2, 1, 4, False),
    (1, 3, 3, 13, 9, 5, 1, 2, 3, True), (2, 2, 2, 9, 9, 5, 2, 2, 2, True),
    (1, 2, 4, 7, 6, 3, 1, 1, 2, True),  # depthwise with 2 filters per channel
    (1, 4, 6, 7, 6, 3, 1, 1, 2, True),  # grouped (2 groups of 2): the plain op on both doors
    (1, 2, 3, 1, 1, 3, 1, 1, 1, True),  # a 1x1 image, all padding
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_general(xp, rng, cpu_setup, dtype, case):
    N, Cin, Cout, H, W, k, stride, padding, groups, bias = case
    x = normal(xp, rng, dtype, N, Cin, H, W)
    w = normal(xp, rng, dtype, Cout, Cin // groups, k, k)
    b = normal(xp, rng, dtype, Cout) if bias else None
    compare(xp, rng, dtype, plain_conv, fast_conv, "conv2d_general", lambda: (x, w, b),
            dict(stride=stride, padding=padding, groups=groups), 3)
