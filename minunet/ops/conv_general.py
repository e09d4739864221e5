"""2-D convolution with zero padding, stride and groups: what each changes in im2col.

The U-Net's successors pad their 3x3 convolutions ("same": the map keeps its size), down-sample
with stride-2 convolutions (Residual U-Net), and split channels into groups (MobileNetV2's and
EfficientNet's depthwise convolutions: groups = C, one k x k filter per channel). ops/conv.py,
the paper's valid stride-1 convolution, is the lesson; this file is the same im2col with three
changes (the layout of cols is the same: rows (c, i, j), columns (n, y, x)):

    padding p   im2col reads from x padded with p zeros on every side; col2im sums into the
                padded gradient and crops the p-pixel frame off again (the zeros had no input)
    stride s    output pixel (y, x) reads the window at (s*y, s*x): the slice of offset (i, j)
                steps by s, so Ho = (H + 2p - k) // s + 1 (rows the last window does not reach
                are never read: their gradient is 0, as in PyTorch)
    groups g    input channels in g blocks of Cg = Cin/g, output channels in g blocks of
                Og = Cout/g; block b of the output sees only block b of the input. The weight
                is (Cout, Cg, k, k) and the one matrix product becomes g smaller ones:

    cols = im2col(pad(x))                           (Cin*k*k, N*Ho*Wo)
         viewed as (g, Cg*k*k, N*Ho*Wo)
    out_b = w_b (Og, Cg*k*k) @ cols_b + bias_b      one product per group   (g, Og, N*Ho*Wo)

and the backward the same three products per group (D = dL/dout as (g, Og, N*Ho*Wo)):

    dw_b = D_b @ cols_b.T        db = D summed over (n, y, x)        dcols_b = w_b.T @ D_b
    dx = crop_p(col2im(dcols))   every padded input pixel gets the sum of the column entries
                                 copied from it; the frame is cropped

The 1x1 pointwise convolution is the k = 1 case; depthwise is groups = Cin (here Cg = 1 and
each "matrix product" is a dot product per channel: this whole-array form spends g small
products where a fast path would loop once over the pixels). The bias is optional: a convolution
followed by a BatchNorm has none (the BatchNorm's beta takes its place).
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_dout, check_float, check_ndim, check_same_dtype


class ConvGeneralCache(NamedTuple):
    cols: object  # (g, Cg*k*k, N*Ho*Wo) the column matrix of the padded input, by group;
    # the fast door (minunet/fast/conv_general.py), which never holds the whole matrix, keeps
    # the input x (N, Cin, H, W) here instead: a cache belongs to the door that made it
    w: object  # (Cout, Cg, k, k) the weight
    x_shape: tuple  # (N, Cin, H, W)
    out_shape: tuple  # (N, Cout, Ho, Wo)
    stride: int
    padding: int
    groups: int
    has_bias: bool


def conv_output_size(size: int, k: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a convolution: (size + 2p - k) // s + 1."""
    return (size + 2 * padding - k) // stride + 1


def resolve_padding(padding, k: int) -> int:
    """An int p >= 0, or 'same' for odd k: p = (k - 1) // 2 (the size is kept at stride 1)."""
    if padding == "same":
        if k % 2 == 0:
            raise ValueError(f"conv2d padding 'same' needs an odd kernel, got k = {k}; give "
                             "the padding as a number")
        return (k - 1) // 2
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"conv2d padding must be an integer >= 0 or 'same', got {padding!r}")
    return padding


def im2col_general(x, k: int, stride: int = 1, padding: int = 0):
    """x: (N, C, H, W). Returns cols (C*k*k, N*Ho*Wo) of the zero-padded input, with the
    layout of ops/conv.py's im2col: one strided slice copy per kernel offset (i, j)."""
    # BEGIN SOLUTION conv2d_general.im2col
    # canary: mu13-301b1ec1e2c9
    xp = xp_of(x)
    N, C, H, W = x.shape
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    p, s = padding, stride
    xpad = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x  # (N, C, H+2p, W+2p)
    cols = xp.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)  # (C, k, k, N, Ho, Wo)
    for i in range(k):
        for j in range(k):  # offset (i, j): the pixels (s*y + i, s*x + j) of every window
            window = xpad[:, :, i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s]
            cols[:, i, j] = window.transpose(1, 0, 2, 3)  # (C, N, Ho, Wo)
    return cols.reshape(C * k * k, N * Ho * Wo)  # (C*k*k, N*Ho*Wo)
    # END SOLUTION


def col2im_general(cols, x_shape, k: int, stride: int = 1, padding: int = 0):
    """The adjoint of im2col_general. cols: (C*k*k, N*Ho*Wo); x_shape: (N, C, H, W).
    Returns dx (N, C, H, W): each pixel sums the entries copied from it; the padding's
    frame, which copied zeros rather than pixels, is cropped off."""
    # BEGIN SOLUTION conv2d_general.col2im
    # canary: mu13-efae0d9dcccb
    xp = xp_of(cols)
    N, C, H, W = x_shape
    Ho, Wo = conv_output_size(H, k, stride, padding), conv_output_size(W, k, stride, padding)
    p, s = padding, stride
    c6 = cols.reshape(C, k, k, N, Ho, Wo)  # (C, k, k, N, Ho, Wo)
    dpad = xp.zeros((C, N, H + 2 * p, W + 2 * p), dtype=cols.dtype)  # (C, N, H+2p, W+2p)
    for i in range(k):
        for j in range(k):  # windows of one offset never overlap each other: += per offset
            dpad[:, :, i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s] += c6[:, i, j]
    dx = dpad[:, :, p : p + H, p : p + W]  # (C, N, H, W) without the frame
    return xp.ascontiguousarray(dx.transpose(1, 0, 2, 3))  # (N, C, H, W)
    # END SOLUTION


def conv2d_general_forward(x, w, b=None, stride: int = 1, padding=0, groups: int = 1):
    """x: (N, Cin, H, W); w: (Cout, Cin/groups, k, k); b: (Cout,) or None; stride 1 or more;
    padding an int or 'same' (odd k); groups dividing Cin and Cout. Returns out
    (N, Cout, Ho, Wo), Ho = (H + 2p - k) // stride + 1, and a ConvGeneralCache."""
    p = resolve_padding(padding, w.shape[-1] if getattr(w, "ndim", 0) == 4 else 1)
    check_conv2d_general(x, w, b, stride, p, groups)
    # BEGIN SOLUTION conv2d_general.forward
    # canary: mu13-49c799a3fdd8
    N, Cin, H, W = x.shape
    Cout, Cg, k, _ = w.shape
    g = groups
    Ho, Wo = conv_output_size(H, k, stride, p), conv_output_size(W, k, stride, p)
    cols = im2col_general(x, k, stride, p).reshape(g, Cg * k * k, N * Ho * Wo)  # by group
    wg = w.reshape(g, Cout // g, Cg * k * k)  # (g, Og, Cg*k*k)
    out = wg @ cols  # (g, Og, N*Ho*Wo): one product per group
    out = out.reshape(Cout, N, Ho, Wo).transpose(1, 0, 2, 3)  # (N, Cout, Ho, Wo)
    if b is not None:
        out = out + b[:, None, None]
    xp = xp_of(x)
    return (xp.ascontiguousarray(out),
            ConvGeneralCache(cols, w, tuple(x.shape), (N, Cout, Ho, Wo), stride, p, g,
                             b is not None))
    # END SOLUTION


def conv2d_general_backward(dout, cache):
    """dout: (N, Cout, Ho, Wo). Returns (dx (N, Cin, H, W), dw (Cout, Cin/groups, k, k),
    db (Cout,) or None when the forward had no bias)."""
    check_dout("conv2d_general", dout, cache.out_shape)
    # BEGIN SOLUTION conv2d_general.backward
    # canary: mu13-26302175004d
    cols, w, g = cache.cols, cache.w, cache.groups
    N, _, Ho, Wo = cache.out_shape
    Cout, Cg, k, _ = w.shape
    D = dout.transpose(1, 0, 2, 3).reshape(g, Cout // g, N * Ho * Wo)  # (g, Og, N*Ho*Wo)
    dw = (D @ cols.transpose(0, 2, 1)).reshape(Cout, Cg, k, k)  # (g, Og, Cg*k*k) -> w's shape
    db = dout.sum(axis=(0, 2, 3)) if cache.has_bias else None  # (Cout,)
    wg = w.reshape(g, Cout // g, Cg * k * k)  # (g, Og, Cg*k*k)
    dcols = (wg.transpose(0, 2, 1) @ D).reshape(g * Cg * k * k, N * Ho * Wo)  # (Cin*k*k, NHoWo)
    dx = col2im_general(dcols, cache.x_shape, k, cache.stride, cache.padding)
    return dx, dw, db
    # END SOLUTION


def check_conv2d_general(x, w, b, stride, padding: int, groups) -> None:
    """x (N, Cin, H, W), w (Cout, Cin/groups, k, k), b (Cout,) or None, one float dtype;
    stride >= 1; groups divides Cin and Cout; the padded input holds at least one window."""
    check_ndim("conv2d input x", x, 4, "N, Cin, H, W")
    check_ndim("conv2d weight w", w, 4, "Cout, Cin/groups, k, k")
    check_float("conv2d input x", x)
    check_same_dtype(x=x, w=w, b=b)
    N, Cin, H, W = x.shape
    Cout, Cg, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"conv2d supports square kernels only, got weight shape {w.shape}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"conv2d stride must be an integer >= 1, got {stride!r}")
    if not isinstance(groups, int) or groups < 1 or Cin % groups or Cout % groups:
        raise ValueError(f"conv2d groups {groups!r} must divide the input channels ({Cin}) and "
                         f"the output channels ({Cout})")
    if Cg * groups != Cin:
        raise ValueError(f"conv2d channel mismatch: input x {x.shape} has {Cin} channels, so "
                         f"with groups {groups} the weight needs {Cin // groups} input channels "
                         f"per group, but weight {w.shape} has {Cg}")
    if b is not None:
        check_ndim("conv2d bias b", b, 1, "Cout")
        if b.shape != (Cout,):
            raise ValueError(f"conv2d bias shape {b.shape} does not match weight {w.shape}: "
                             f"expected ({Cout},)")
    if kh > H + 2 * padding or kw > W + 2 * padding:
        raise ValueError(f"conv2d kernel {kh}x{kw} does not fit the input {H}x{W} padded by "
                         f"{padding}: no output pixel; use a larger input or more padding")
