"""Input validation shared by the ops: clear ValueErrors that name the shapes."""

from __future__ import annotations


def check_ndim(name: str, a, ndim: int, layout: str) -> None:
    """Raise ValueError unless `a` has `ndim` dimensions (layout like 'NCHW')."""
    if getattr(a, "ndim", None) != ndim:
        shape = getattr(a, "shape", type(a).__name__)
        raise ValueError(f"{name} must be a {ndim}-D array ({layout}), got shape {shape}")


def check_float(name: str, a) -> None:
    """Raise ValueError unless `a` holds float32 or float64."""
    if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")


def check_same_dtype(**arrays) -> None:
    """Raise ValueError unless all arrays share one dtype."""
    dtypes = {k: v.dtype for k, v in arrays.items() if v is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{k} {d}" for k, d in dtypes.items())
        raise ValueError(f"dtypes differ ({listed}); cast them to one (float32 or float64)")


# --- the checks of each op, shared by the plain op and its fast twin ----------------


def check_conv2d(x, w, b) -> None:
    """x (N, Cin, H, W), w (Cout, Cin, k, k), b (Cout,), one float dtype, k <= H, W."""
    check_ndim("conv2d input x", x, 4, "N, Cin, H, W")
    check_ndim("conv2d weight w", w, 4, "Cout, Cin, k, k")
    check_ndim("conv2d bias b", b, 1, "Cout")
    check_float("conv2d input x", x)
    check_same_dtype(x=x, w=w, b=b)
    N, Cin, H, W = x.shape
    Cout, Cin_w, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"conv2d supports square kernels only, got weight shape {w.shape}")
    if Cin_w != Cin:
        raise ValueError(
            f"conv2d channel mismatch: input x {x.shape} has {Cin} channels but weight "
            f"{w.shape} expects {Cin_w} (weight layout is Cout, Cin, k, k)"
        )
    if b.shape != (Cout,):
        raise ValueError(f"conv2d bias shape {b.shape} does not match weight {w.shape}: "
                         f"expected ({Cout},)")
    if kh > H or kw > W:
        raise ValueError(f"conv2d kernel {kh}x{kw} is larger than the input image {H}x{W} "
                         f"(x shape {x.shape}); a valid convolution needs H, W >= k")


def check_dout(op: str, dout, shape) -> None:
    """The upstream gradient must have the forward output's shape."""
    if tuple(dout.shape) != tuple(shape):
        raise ValueError(f"{op}_backward: dout shape {dout.shape} does not match the "
                         f"forward output {tuple(shape)}")


def check_upconv2x2(x, w, b) -> None:
    """x (N, Cin, H, W), w (Cin, Cout, 2, 2) as torch's ConvTranspose2d, b (Cout,)."""
    check_ndim("upconv2x2 input x", x, 4, "N, Cin, H, W")
    check_ndim("upconv2x2 weight w", w, 4, "Cin, Cout, 2, 2")
    check_ndim("upconv2x2 bias b", b, 1, "Cout")
    check_float("upconv2x2 input x", x)
    check_same_dtype(x=x, w=w, b=b)
    if w.shape[2:] != (2, 2):
        raise ValueError(f"upconv2x2 weight must be (Cin, Cout, 2, 2), got {w.shape}")
    if w.shape[0] != x.shape[1]:
        raise ValueError(
            f"upconv2x2 channel mismatch: input x {x.shape} has {x.shape[1]} channels but "
            f"weight {w.shape} expects {w.shape[0]} (layout Cin, Cout, 2, 2 as ConvTranspose2d)"
        )
    if b.shape != (w.shape[1],):
        raise ValueError(f"upconv2x2 bias shape {b.shape} does not match weight {w.shape}: "
                         f"expected ({w.shape[1]},)")


def check_maxpool2x2(x) -> None:
    """x (N, C, H, W) float with H and W even (the U-Net pools only even sizes)."""
    check_ndim("maxpool2x2 input x", x, 4, "N, C, H, W")
    check_float("maxpool2x2 input x", x)
    H, W = x.shape[2:]
    if H % 2 or W % 2:
        raise ValueError(
            f"maxpool2x2 needs an even height and width, got x shape {x.shape}; the U-Net "
            f"only pools even sizes, so choose a valid tile size (minunet.models.sizes.valid_sizes)"
        )


def check_softmax_xent(logits, labels, weights) -> None:
    """logits (N, K, H, W) float, labels (N, H, W) int in 0..K-1, weights (N, H, W)."""
    check_ndim("softmax_cross_entropy logits", logits, 4, "N, K, H, W")
    check_ndim("softmax_cross_entropy labels", labels, 3, "N, H, W")
    check_ndim("softmax_cross_entropy weights", weights, 3, "N, H, W")
    check_float("softmax_cross_entropy logits", logits)
    N, K, H, W = logits.shape
    if labels.shape != (N, H, W) or weights.shape != (N, H, W):
        raise ValueError(f"softmax_cross_entropy: logits {logits.shape} need labels and weights "
                         f"of shape {(N, H, W)}, got labels {labels.shape}, weights "
                         f"{weights.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy labels must be integer class indices, "
                         f"got dtype {labels.dtype}")
    if type(labels).__module__.split(".")[0] != "cupy":  # on the GPU this check would need a
        lo, hi = int(labels.min()), int(labels.max())  # sync; the data loaders check labels once
        if lo < 0 or hi >= K:
            raise ValueError(f"softmax_cross_entropy labels must lie in 0..{K - 1} for K = {K} "
                             f"classes (logits {logits.shape}), found values {lo}..{hi}")
