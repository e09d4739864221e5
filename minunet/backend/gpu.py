"""GPU twins of the hot loops: launchers for the CUDA kernels in kernels/*.cu.

Each public function here has the signature and layout of its CPU twin in
`minunet/backend/cpu.py` and of its dispatcher in `minunet/backend/twins.py`.
Every `.cu` file opens with a header that names its launchers here, its CPU
twins, the plain op it speeds up (minunet/ops) and its tests; a test
(tests/backend/test_kernel_files.py) checks that every name there exists.

How a kernel is found and compiled:

    kernel_dir()                 the folder of the .cu files: minunet/kernels in an
                                 installed wheel, <repo>/kernels in a checkout
    kernel(file, name, dtype)    the template instance name<float> or name<double>
                                 (softmax_xent: name<float, int> ... by label dtype)

Every .cu file is compiled once per (device, file) by NVRTC through
`cupy.RawModule(code=..., name_expressions=...)`, with all its template
instances at once, and the module and each looked-up kernel are kept in dicts.
(CuPy's compiler, as of v13, skips its on-disk cache when name_expressions are
given, because it needs NVRTC to report the mangled names: each process pays one
NVRTC compile per file it uses, a fraction of a second each; call
`compile_all()` before timing anything.) CuPy is imported lazily
(`backend.device._cupy()`), so this module imports, and `kernel_dir()` works,
without it.

No launcher copies between host and device or synchronises: shapes, dtypes and
pointers are host-side facts, and every reduction stays on the device (the
softmax loss comes back as a 0-d device array).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .device import _cupy

__all__ = [
    "KERNEL_FILES", "kernel_dir", "kernel", "name_expressions", "compile_all",
    "im2col", "col2im", "maxpool2x2_forward", "maxpool2x2_backward",
    "softmax_xent_forward", "softmax_xent_backward",
    "bias_relu_forward", "relu_backward", "upconv_scatter", "upconv_gather",
    "sgd_update", "sgd_update_many",
    "im2col_geometry", "col2im_geometry", "maxpool2x2_geometry", "softmax_xent_forward_geometry",
    "sum_partials_geometry", "softmax_xent_backward_geometry", "bias_relu_geometry",
    "elementwise_geometry", "upconv_geometry",
    "bn_stats_partials", "bn_grad_partials", "bn_normalize", "bn_backward_dx",
    "bn_partials_geometry", "plane_geometry", "bilinear_forward", "bilinear_adjoint",
    "depthwise_forward", "depthwise_backward_dx", "depthwise_dw_partials",
    "depthwise_dw_geometry", "im2col_padded", "col2im_padded", "im2col_padded_geometry",
    "col2im_padded_geometry",
]

# Every kernel file and the templates it defines (templated on the element type T).
KERNEL_FILES: dict[str, tuple[str, ...]] = {
    "im2col.cu": ("im2col", "col2im"),
    "pool.cu": ("maxpool2x2_forward", "maxpool2x2_backward"),
    "relu.cu": ("bias_relu_forward", "relu_backward"),
    "softmax_xent.cu": ("softmax_xent_forward", "softmax_xent_backward", "sum_partials"),
    "upconv.cu": ("upconv_scatter", "upconv_gather"),
    "sgd.cu": ("sgd_update", "sgd_update_many"),
    "im2col_padded.cu": ("im2col_padded", "col2im_padded"),
    "depthwise.cu": ("depthwise_forward", "depthwise_backward_dx", "depthwise_dw_partials"),
    "resample.cu": ("bilinear_forward", "bilinear_adjoint"),
    "batchnorm.cu": ("bn_stats_partials", "bn_grad_partials", "bn_normalize", "bn_backward_dx"),
}
# Templates with a second parameter, the label type L.
_LABEL_TEMPLATES = {"softmax_xent_forward", "softmax_xent_backward"}

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_LTYPE = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}

# NVRTC options (CuPy adds -arch for the current device and -ftz=true).
COMPILE_OPTIONS = ("--std=c++17",)

_BLOCK = 256  # threads per block for every kernel (softmax_xent.cu's kBlock must match)
_MAX_BLOCKS = 65535  # grid-stride loops cover the rest; also the limit of grid.y
_SOFTMAX_MAX_BLOCKS = 1024  # partial loss sums; a function of the pixel count only
_I32 = 2**31  # sizes that index one row/plane with 32-bit math must stay below this


# ---------------------------------------------------------------------------
# Finding, compiling and looking up kernels
# ---------------------------------------------------------------------------


def kernel_dir() -> Path:
    """The folder holding the kernel sources (*.cu).

    An installed wheel carries them at minunet/kernels (pyproject's force-include);
    a source checkout has them at <repo root>/kernels. Raises FileNotFoundError
    naming both places when neither has them.
    """
    package = Path(__file__).resolve().parent.parent  # minunet/
    candidates = (package / "kernels", package.parent / "kernels")
    for d in candidates:
        if (d / "im2col.cu").is_file():
            return d
    raise FileNotFoundError(
        "minunet's CUDA kernel sources (*.cu) were not found in "
        + " or ".join(str(d) for d in candidates)
        + "; reinstall minunet (the wheel ships them) or run from a full checkout"
    )


def _expr(name: str, dtype, label_dtype=None) -> str:
    """The C++ name expression of one template instance, e.g. 'col2im<float>'."""
    ctype = _CTYPE[np.dtype(dtype)]
    if name in _LABEL_TEMPLATES:
        return f"{name}<{ctype}, {_LTYPE[np.dtype(label_dtype)]}>"
    return f"{name}<{ctype}>"


def name_expressions(file: str) -> list[str]:
    """Every template instance of one kernel file (float and double, and label types)."""
    out = []
    for name in KERNEL_FILES[file]:
        for dt in _CTYPE:
            labels = _LTYPE if name in _LABEL_TEMPLATES else (None,)
            out.extend(_expr(name, dt, lt) for lt in labels)
    return out


_modules: dict = {}  # (device id, file) -> cupy.RawModule
_kernels: dict = {}  # (device id, file, name expression) -> cupy.RawKernel


def _module(file: str, device: int | None = None):
    cp = _cupy()
    key = (cp.cuda.runtime.getDevice() if device is None else device, file)
    mod = _modules.get(key)
    if mod is None:
        code = (kernel_dir() / file).read_text()
        mod = cp.RawModule(code=code, options=COMPILE_OPTIONS,
                           name_expressions=name_expressions(file))
        _modules[key] = mod
    return mod


def kernel(file: str, name: str, dtype, label_dtype=None):
    """The compiled instance of template `name` from kernels/`file` for `dtype`.

    dtype: float32 or float64 (the element type T); label_dtype: int32 or int64
    for the softmax kernels. Returns a cupy.RawKernel for the current device.
    """
    if name not in KERNEL_FILES.get(file, ()):
        raise ValueError(f"no kernel {name!r} in kernels/{file}; known: {KERNEL_FILES}")
    if np.dtype(dtype) not in _CTYPE:
        raise ValueError(f"GPU kernels run in float32 or float64, got {np.dtype(dtype)}")
    device = _cupy().cuda.runtime.getDevice()
    expr = _expr(name, dtype, label_dtype)
    kern = _kernels.get((device, file, expr))
    if kern is None:
        kern = _module(file, device).get_function(expr)
        _kernels[(device, file, expr)] = kern
    return kern


def compile_all() -> None:
    """Compile every kernel file for the current device now (e.g. before timing)."""
    for file, names in KERNEL_FILES.items():
        for name in names:
            for dt in _CTYPE:
                for lt in (_LTYPE if name in _LABEL_TEMPLATES else (None,)):
                    kernel(file, name, dt, lt)


# ---------------------------------------------------------------------------
# Small launch helpers (host-side facts only: no synchronisation)
# ---------------------------------------------------------------------------


def _blocks(n: int, cap: int = _MAX_BLOCKS) -> int:
    return int(max(1, min(-(-n // _BLOCK), cap)))


def _float_dtype(name: str, a):
    dt = np.dtype(a.dtype)
    if dt not in _CTYPE:
        raise ValueError(f"{name} must be float32 or float64 on the GPU, got {dt}")
    return dt


def _contiguous_out(name: str, a, shape, dtype):
    if tuple(a.shape) != tuple(shape) or a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype)} array of shape "
                         f"{tuple(shape)}, got {a.dtype} {tuple(a.shape)} "
                         f"(c_contiguous={a.flags.c_contiguous})")


def _below_2_31(what: str, n: int) -> None:
    if n >= _I32:
        raise ValueError(f"{what} = {n} is too large for the GPU kernels' 32-bit in-plane "
                         f"indexing (must be < 2**31); split the work into smaller pieces")


def _labels(labels):
    """Labels as a contiguous int32 or int64 device array (converted on the device if needed)."""
    cp = _cupy()
    if np.dtype(labels.dtype) not in _LTYPE:
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(cp.int32)
    return cp.ascontiguousarray(labels)


# ---------------------------------------------------------------------------
# Launch geometry: pure functions of the sizes, (grid, block) per launch. The
# launchers below call them, and so does the CPU emulation of the kernels
# (minunet/backend/emulate.py, tests/emulation/), which therefore runs every
# kernel with exactly the geometry the GPU gets. No CuPy needed to call them.
# ---------------------------------------------------------------------------


def im2col_geometry(C: int, H: int, W: int, k: int, y0: int, y1: int):
    """(grid, block) of im2col: grid.x over the (y1-y0)*Wo columns, grid.y over C*k*k rows."""
    L = (y1 - y0) * (W - k + 1)
    return (_blocks(L), min(C * k * k, _MAX_BLOCKS)), (_BLOCK,)


def col2im_geometry(C: int, H: int, W: int, k: int, y0: int, y1: int):
    """(grid, block) of col2im: grid.x over the band's (y1-y0+k-1)*W pixels, grid.y over C."""
    band = (y1 - y0 + k - 1) * W  # dx pixels that receive gradient in each channel
    return (_blocks(band), min(C, _MAX_BLOCKS)), (_BLOCK,)


def maxpool2x2_geometry(P: int, Ho: int, Wo: int):
    """(grid, block) of both max-pool kernels: grid.x over Ho*Wo windows, grid.y over P planes."""
    return (_blocks(Ho * Wo), min(max(P, 1), _MAX_BLOCKS)), (_BLOCK,)


def softmax_xent_forward_geometry(npix: int):
    """(grid, block) of softmax_xent_forward: at most 1024 blocks, a function of npix only
    (grid[0] partial sums, added by sum_partials)."""
    return (_blocks(npix, _SOFTMAX_MAX_BLOCKS),), (_BLOCK,)


def sum_partials_geometry():
    """(grid, block) of sum_partials: one block of 256 threads."""
    return (1,), (_BLOCK,)


def softmax_xent_backward_geometry(npix: int):
    """(grid, block) of softmax_xent_backward: grid-stride over the pixels."""
    return (_blocks(npix),), (_BLOCK,)


def bias_relu_geometry(planes: int, S: int):
    """(grid, block) of bias_relu_forward: grid.x over S pixels, grid.y over the N*C planes."""
    return (_blocks(S), min(max(planes, 1), _MAX_BLOCKS)), (_BLOCK,)


def elementwise_geometry(n: int):
    """(grid, block) of the 1-D grid-stride kernels (relu_backward, sgd_update[_many])."""
    return (_blocks(n),), (_BLOCK,)


def upconv_geometry(planes: int, H: int, W: int):
    """(grid, block) of upconv_scatter and upconv_gather: grid.x over 4*H*W, grid.y planes."""
    return (_blocks(4 * H * W), min(max(planes, 1), _MAX_BLOCKS)), (_BLOCK,)


# ---------------------------------------------------------------------------
# The twins of cpu.py (same signatures and layouts)
# ---------------------------------------------------------------------------


def im2col(x, k, y0, y1, out):
    """See minunet.backend.twins.im2col. x (C, H, W); out (C*k*k, (y1-y0)*(W-k+1)), contiguous."""
    cp = _cupy()
    dt = _float_dtype("im2col input x", x)
    x = cp.ascontiguousarray(x)
    C, H, W = x.shape
    k, y0, y1 = int(k), int(y0), int(y1)
    Wo = W - k + 1
    L = (y1 - y0) * Wo
    _contiguous_out("im2col out", out, (C * k * k, L), dt)
    _below_2_31("im2col columns per row (y1-y0)*Wo", L)
    _below_2_31("im2col image plane H*W", H * W)
    kernel("im2col.cu", "im2col", dt)(
        *im2col_geometry(C, H, W, k, y0, y1),
        (x, out, np.int32(C), np.int32(H), np.int32(W), np.int32(k), np.int32(y0), np.int32(y1)),
    )
    return out


def col2im(cols, k, y0, y1, dx):
    """See minunet.backend.twins.col2im. cols (C*k*k, (y1-y0)*(W-k+1)); dx (C, H, W) += (gather)."""
    cp = _cupy()
    dt = _float_dtype("col2im cols", cols)
    cols = cp.ascontiguousarray(cols)
    C, H, W = dx.shape
    k, y0, y1 = int(k), int(y0), int(y1)
    Wo = W - k + 1
    L = (y1 - y0) * Wo
    _contiguous_out("col2im dx", dx, (C, H, W), dt)
    if tuple(cols.shape) != (C * k * k, L):
        raise ValueError(f"col2im cols shape {tuple(cols.shape)} does not match dx {(C, H, W)}, "
                         f"k = {k}, rows {y0}..{y1}: expected {(C * k * k, L)}")
    _below_2_31("col2im columns per row (y1-y0)*Wo", L)
    _below_2_31("col2im image plane H*W", H * W)
    kernel("im2col.cu", "col2im", dt)(
        *col2im_geometry(C, H, W, k, y0, y1),
        (cols, dx, np.int32(C), np.int32(H), np.int32(W), np.int32(k), np.int32(y0),
         np.int32(y1)),
    )
    return dx


def maxpool2x2_forward(x):
    """See minunet.backend.twins.maxpool2x2_forward. (N, C, H, W) -> out, arg (N, C, H/2, W/2)."""
    cp = _cupy()
    dt = _float_dtype("maxpool2x2 input x", x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    _below_2_31("maxpool2x2 plane H*W", H * W)
    out = cp.empty((N, C, H // 2, W // 2), dtype=dt)
    arg = cp.empty((N, C, H // 2, W // 2), dtype=cp.uint8)
    P = N * C
    kernel("pool.cu", "maxpool2x2_forward", dt)(
        *maxpool2x2_geometry(P, H // 2, W // 2),
        (x, out, arg, np.int64(P), np.int32(H), np.int32(W)),
    )
    return out, arg


def maxpool2x2_backward(dout, arg):
    """See minunet.backend.twins.maxpool2x2_backward. (N, C, Ho, Wo) -> dx (N, C, 2Ho, 2Wo)."""
    cp = _cupy()
    dt = _float_dtype("maxpool2x2_backward dout", dout)
    dout = cp.ascontiguousarray(dout)
    arg = cp.ascontiguousarray(arg)
    if arg.shape != dout.shape or arg.dtype != cp.uint8:
        raise ValueError(f"maxpool2x2_backward: arg must be uint8 of dout's shape {dout.shape}, "
                         f"got {arg.dtype} {arg.shape}")
    N, C, Ho, Wo = dout.shape
    _below_2_31("maxpool2x2 plane H*W", 4 * Ho * Wo)
    dx = cp.empty((N, C, 2 * Ho, 2 * Wo), dtype=dt)  # every pixel is written by the kernel
    P = N * C
    kernel("pool.cu", "maxpool2x2_backward", dt)(
        *maxpool2x2_geometry(P, Ho, Wo),
        (dout, arg, dx, np.int64(P), np.int32(Ho), np.int32(Wo)),
    )
    return dx


def _softmax_inputs(name, x, labels, weights):
    """(dtype, x, labels, weights) made contiguous on the device, with the shapes checked:
    x (N, K, H, W) float, labels (N, H, W) int32/int64, weights (N, H, W) of x's dtype."""
    cp = _cupy()
    dt = _float_dtype(name, x)
    x = cp.ascontiguousarray(x)
    N, K, H, W = x.shape
    labels = _labels(labels)
    weights = cp.ascontiguousarray(weights, dtype=dt)
    if labels.shape != (N, H, W) or weights.shape != (N, H, W):
        raise ValueError(f"{name} {x.shape} needs labels and weights of shape {(N, H, W)}, "
                         f"got {labels.shape} and {weights.shape}")
    return dt, x, labels, weights


def softmax_xent_forward(logits, labels, weights):
    """See minunet.backend.twins.softmax_xent_forward. Returns (loss_sum 0-d device array, probs).

    A label outside 0..K-1 on a pixel with weight != 0 makes loss_sum NaN (the
    kernel cannot raise; the ops check labels on the host, the loaders once).
    """
    cp = _cupy()
    dt, logits, labels, weights = _softmax_inputs("softmax_xent logits", logits, labels, weights)
    N, K, H, W = logits.shape
    npix = N * H * W
    probs = cp.empty_like(logits)
    grid, block = softmax_xent_forward_geometry(npix)  # npix only: reproducible sums
    blocks = grid[0]
    partial = cp.empty(blocks, dtype=cp.float64)
    kernel("softmax_xent.cu", "softmax_xent_forward", dt, labels.dtype)(
        grid, block,
        (logits, labels, weights, probs, partial, np.int32(K), np.int64(H * W), np.int64(npix)),
    )
    loss_sum = cp.empty((), dtype=dt)
    kernel("softmax_xent.cu", "sum_partials", dt)(
        *sum_partials_geometry(), (partial, np.int32(blocks), loss_sum)
    )
    return loss_sum, probs


def softmax_xent_backward(probs, labels, weights, scale):
    """See minunet.backend.twins.softmax_xent_backward. dlogits = scale*w*(probs - onehot)."""
    cp = _cupy()
    dt, probs, labels, weights = _softmax_inputs("softmax_xent probs", probs, labels, weights)
    N, K, H, W = probs.shape
    npix = N * H * W
    dlogits = cp.empty_like(probs)
    kernel("softmax_xent.cu", "softmax_xent_backward", dt, labels.dtype)(
        *softmax_xent_backward_geometry(npix),
        (probs, labels, weights, dlogits, dt.type(scale), np.int32(K), np.int64(H * W),
         np.int64(npix)),
    )
    return dlogits


# ---------------------------------------------------------------------------
# Launchers of the extra kernels (their NumPy twins: see each .cu file's header)
# ---------------------------------------------------------------------------


def bias_relu_rows(o2, b, relu):
    """o2 (C, L) += b[:, None], then relu if asked, IN PLACE on a strided row chunk; returns
    o2. Elementwise CuPy (two launches): the fast conv runs its GPU epilogue over the whole
    output with bias_relu_forward instead, so this twin is for completeness and tests."""
    o2 += b.astype(o2.dtype, copy=False)[:, None]
    if relu:
        _cupy().copyto(o2, o2.dtype.type(0), where=o2 <= 0)  # a NaN passes, as relu.cu
    return o2


def bias_relu_forward(x, b):
    """x = relu(x + b[c]) IN PLACE for x (N, C, ...) C-contiguous, b (C,). Returns x.

    The fused epilogue of conv2d_forward: `o2 += b[:, None]` then relu_forward.
    """
    dt = _float_dtype("bias_relu_forward x", x)
    if not x.flags.c_contiguous:
        raise ValueError("bias_relu_forward works in place and needs a C-contiguous x, got a "
                         "strided view; pass cupy.ascontiguousarray(x)")
    if x.ndim < 2 or tuple(b.shape) != (x.shape[1],) or b.dtype != dt:
        raise ValueError(f"bias_relu_forward: x (N, C, ...) {x.shape} needs a bias of shape "
                         f"({x.shape[1] if x.ndim >= 2 else '?'},) and dtype {dt}, "
                         f"got {b.dtype} {b.shape}")
    b = _cupy().ascontiguousarray(b)
    planes = x.shape[0] * x.shape[1]
    S = x.size // max(planes, 1)
    kernel("relu.cu", "bias_relu_forward", dt)(
        *bias_relu_geometry(planes, S),
        (x, b, np.int64(planes), np.int32(x.shape[1]), np.int64(S)),
    )
    return x


def relu_backward(dout, out, dx=None):
    """dx = dout where out > 0, else 0 (any shape; dout and out of one shape and dtype).

    dx: a contiguous array of that shape to write into, or None for a new one."""
    cp = _cupy()
    dt = _float_dtype("relu_backward dout", dout)
    if dout.shape != out.shape or out.dtype != dt:
        raise ValueError(f"relu_backward: dout {dout.dtype} {dout.shape} and out "
                         f"{out.dtype} {out.shape} must match")
    dout = cp.ascontiguousarray(dout)
    out = cp.ascontiguousarray(out)
    if dx is None:
        dx = cp.empty_like(dout)
    elif dx.shape != dout.shape or dx.dtype != dt or not dx.flags.c_contiguous:
        raise ValueError(f"relu_backward: dx must be a contiguous {dt} array of shape "
                         f"{dout.shape}, got {dx.dtype} {dx.shape}")
    kernel("relu.cu", "relu_backward", dt)(
        *elementwise_geometry(dout.size), (dout, out, dx, np.int64(dout.size))
    )
    return dx


def upconv_scatter(cols, b):
    """cols (N, Cout, 2, 2, H, W), b (Cout,) -> out (N, Cout, 2H, 2W), out[.., 2y+i, 2x+j] =
    cols[.., i, j, y, x] + b[o]. The forward rearrangement of upconv2x2 after its GEMM."""
    cp = _cupy()
    dt = _float_dtype("upconv_scatter cols", cols)
    if cols.ndim != 6 or cols.shape[2:4] != (2, 2):
        raise ValueError(f"upconv_scatter: cols must be (N, Cout, 2, 2, H, W), got {cols.shape}")
    N, Cout, _, _, H, W = cols.shape
    if tuple(b.shape) != (Cout,) or b.dtype != dt:
        raise ValueError(f"upconv_scatter: bias must be {dt} ({Cout},), got {b.dtype} {b.shape}")
    _below_2_31("upconv plane 4*H*W", 4 * H * W)
    cols = cp.ascontiguousarray(cols)
    b = cp.ascontiguousarray(b)
    out = cp.empty((N, Cout, 2 * H, 2 * W), dtype=dt)
    planes = N * Cout
    kernel("upconv.cu", "upconv_scatter", dt)(
        *upconv_geometry(planes, H, W),
        (cols, b, out, np.int64(planes), np.int32(Cout), np.int32(H), np.int32(W)),
    )
    return out


def upconv_gather(dout):
    """dout (N, Cout, 2H, 2W) -> dcols (N, Cout, 2, 2, H, W), dcols[.., i, j, y, x] =
    dout[.., 2y+i, 2x+j]. The inverse of upconv_scatter (without bias), for the backward."""
    cp = _cupy()
    dt = _float_dtype("upconv_gather dout", dout)
    if dout.ndim != 4 or dout.shape[2] % 2 or dout.shape[3] % 2:
        raise ValueError(f"upconv_gather: dout must be (N, Cout, 2H, 2W) with even sizes, "
                         f"got {dout.shape}")
    N, Cout, H2, W2 = dout.shape
    H, W = H2 // 2, W2 // 2
    _below_2_31("upconv plane 4*H*W", 4 * H * W)
    dout = cp.ascontiguousarray(dout)
    dcols = cp.empty((N, Cout, 2, 2, H, W), dtype=dt)
    planes = N * Cout
    kernel("upconv.cu", "upconv_gather", dt)(
        *upconv_geometry(planes, H, W),
        (dout, dcols, np.int64(planes), np.int32(H), np.int32(W)),
    )
    return dcols


def sgd_update(w, v, g, lr, momentum, weight_decay=0.0):
    """Momentum SGD, Caffe convention, in place: v = m*v - lr*(g + wd*w); w += v.

    w, v, g: C-contiguous arrays of one shape and dtype (one parameter or one flat
    buffer holding all of them). Returns (w, v).
    """
    dt = _float_dtype("sgd_update w", w)
    for name, a in (("v", v), ("g", g)):
        if a.shape != w.shape or a.dtype != dt:
            raise ValueError(f"sgd_update: {name} {a.dtype} {a.shape} must match w {dt} "
                             f"{w.shape}")
    if not (w.flags.c_contiguous and v.flags.c_contiguous):
        raise ValueError("sgd_update updates w and v in place: both must be C-contiguous")
    g = _cupy().ascontiguousarray(g)
    kernel("sgd.cu", "sgd_update", dt)(
        *elementwise_geometry(w.size),
        (w, v, g, np.int64(w.size), dt.type(lr), dt.type(momentum), dt.type(weight_decay)),
    )
    return w, v


_sgd_tables: dict = {}  # (dtype, pointers, sizes) -> device tables, built once per parameter set


def _sgd_table(ws, vs, gs, dt):
    key = (dt.str,) + tuple((a.data.ptr, b.data.ptr, c.data.ptr, a.size)
                            for a, b, c in zip(ws, vs, gs, strict=True))
    table = _sgd_tables.get(key)
    if table is None:  # one small host->device copy per new parameter set, not per step
        cp = _cupy()
        sizes = np.array([a.size for a in ws], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        table = (
            cp.asarray(np.array([a.data.ptr for a in ws], dtype=np.uint64)),
            cp.asarray(np.array([a.data.ptr for a in vs], dtype=np.uint64)),
            cp.asarray(np.array([a.data.ptr for a in gs], dtype=np.uint64)),
            cp.asarray(offsets),
            int(offsets[-1]),
        )
        if len(_sgd_tables) >= 16:  # parameter sets come and go (tests); keep a few
            _sgd_tables.clear()
        _sgd_tables[key] = table
    return table


def sgd_update_many(ws, vs, gs, lr, momentum, weight_decay=0.0):
    """sgd_update over several arrays in ONE launch (all parameters of the model).

    ws, vs, gs: sequences of C-contiguous device arrays, pairwise of one shape, all of
    one dtype. The pointer tables are built on the first call for a given set of
    arrays and reused (keep the velocity and gradient buffers alive between steps).
    """
    ws, vs, gs = list(ws), list(vs), list(gs)
    if not (len(ws) == len(vs) == len(gs)) or not ws:
        raise ValueError(f"sgd_update_many needs equally many (>= 1) weights, velocities and "
                         f"gradients, got {len(ws)}, {len(vs)}, {len(gs)}")
    dt = _float_dtype("sgd_update_many weights", ws[0])
    for i, (w, v, g) in enumerate(zip(ws, vs, gs, strict=True)):
        for name, a in (("w", w), ("v", v), ("g", g)):
            if a.shape != w.shape or a.dtype != dt or not a.flags.c_contiguous:
                raise ValueError(f"sgd_update_many: array {i}: {name} must be a C-contiguous {dt} "
                                 f"array of shape {w.shape}, got {a.dtype} {a.shape}")
    wt, vt, gt, offsets, total = _sgd_table(ws, vs, gs, dt)
    kernel("sgd.cu", "sgd_update_many", dt)(
        *elementwise_geometry(total),
        (wt, vt, gt, offsets, np.int32(len(ws)), dt.type(lr), dt.type(momentum),
         dt.type(weight_decay)),
    )
    return ws, vs


# ---------------------------------------------------------------------------
# BatchNorm (kernels/batchnorm.cu): per-channel sums in one pass, fused epilogues
# ---------------------------------------------------------------------------

BN_CHUNK = 2048  # values per work item of the partial sums (batchnorm.cu: kBnChunk)


def bn_partials_geometry(planes: int, HW: int):
    """(grid, block) of bn_stats_partials and bn_grad_partials: one 256-thread block per work
    item of BN_CHUNK values, grid-stride over the planes * ceil(HW / BN_CHUNK) items."""
    items = planes * -(-HW // BN_CHUNK)
    return (int(max(1, min(items, _MAX_BLOCKS))),), (_BLOCK,)


def plane_geometry(planes: int, S: int):
    """(grid, block) of the per-plane elementwise kernels (bn_normalize, bn_backward_dx, the
    bilinear and depthwise kernels): grid.x over the S values of a plane, grid.y the planes."""
    return (_blocks(S), min(max(planes, 1), _MAX_BLOCKS)), (_BLOCK,)


def _bn_partials(name, arrays, extra):
    cp = _cupy()
    dt = _float_dtype(f"{name} input", arrays[0])
    arrays = [cp.ascontiguousarray(a, dtype=dt) for a in arrays]
    N, C, H, W = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != arrays[0].shape:
            raise ValueError(f"{name}: arrays of one shape needed, got {a.shape} and "
                             f"{arrays[0].shape}")
    _below_2_31(f"{name} plane H*W", H * W)
    nq = -(-(H * W) // BN_CHUNK)
    part = cp.empty((N, C, nq, 2), dtype=cp.float64)
    kernel("batchnorm.cu", name, dt)(
        *bn_partials_geometry(N * C, H * W),
        (*arrays, part, np.int64(N * C), *extra(C), np.int64(H * W), np.int32(nq)))
    return part


def bn_stats_partials(x):
    """See minunet.backend.twins.bn_stats_partials. x (N, C, H, W) -> (N, C, nq, 2) float64."""
    return _bn_partials("bn_stats_partials", [x], lambda C: (np.int32(C),))


def bn_grad_partials(dout, xhat):
    """See minunet.backend.twins.bn_grad_partials. -> (N, C, nq, 2) float64."""
    return _bn_partials("bn_grad_partials", [dout, xhat], lambda C: ())


def _per_channel(cp, dt, C, *arrays):
    out = []
    for a in arrays:
        a = cp.ascontiguousarray(a, dtype=dt)
        if a.shape != (C,):
            raise ValueError(f"a per-channel parameter must have shape ({C},), got {a.shape}")
        out.append(a)
    return out


def bn_normalize(x, mean, inv_std, gamma, beta):
    """See minunet.backend.twins.bn_normalize. Returns (xhat, out), (N, C, H, W) each."""
    cp = _cupy()
    dt = _float_dtype("bn_normalize x", x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    _below_2_31("bn_normalize plane H*W", H * W)
    par = _per_channel(cp, dt, C, mean, inv_std, gamma, beta)
    xhat, out = cp.empty_like(x), cp.empty_like(x)
    kernel("batchnorm.cu", "bn_normalize", dt)(
        *plane_geometry(N * C, H * W),
        (x, *par, xhat, out, np.int64(N * C), np.int32(C), np.int64(H * W)))
    return xhat, out


def bn_backward_dx(dout, xhat, k, m1, m2):
    """See minunet.backend.twins.bn_backward_dx. Returns dx (N, C, H, W)."""
    cp = _cupy()
    dt = _float_dtype("bn_backward_dx dout", dout)
    dout, xhat = cp.ascontiguousarray(dout), cp.ascontiguousarray(xhat, dtype=dt)
    N, C, H, W = dout.shape
    _below_2_31("bn_backward_dx plane H*W", H * W)
    par = _per_channel(cp, dt, C, k, m1, m2)
    dx = cp.empty_like(dout)
    kernel("batchnorm.cu", "bn_backward_dx", dt)(
        *plane_geometry(N * C, H * W),
        (dout, xhat, *par, dx, np.int64(N * C), np.int32(C), np.int64(H * W)))
    return dx


# ---------------------------------------------------------------------------
# Bilinear up-sampling and its adjoint (kernels/resample.cu); geometry: plane_geometry
# ---------------------------------------------------------------------------


def bilinear_forward(x, factor, align_corners):
    """See minunet.backend.twins.bilinear_forward. x (N, C, H, W) -> (N, C, f*H, f*W)."""
    cp = _cupy()
    dt = _float_dtype("bilinear_forward x", x)
    x = cp.ascontiguousarray(x)
    N, C, H, W = x.shape
    f = int(factor)
    _below_2_31("bilinear output plane", H * W * f * f)
    out = cp.empty((N, C, f * H, f * W), dtype=dt)
    kernel("resample.cu", "bilinear_forward", dt)(
        *plane_geometry(N * C, H * W * f * f),
        (x, out, np.int64(N * C), np.int32(H), np.int32(W), np.int32(f),
         np.int32(bool(align_corners))))
    return out


def bilinear_adjoint(src, a):
    """See minunet.backend.twins.bilinear_adjoint. src (P, So, Q), a (So, S) -> (P, S, Q)."""
    cp = _cupy()
    dt = _float_dtype("bilinear_adjoint src", src)
    src = cp.ascontiguousarray(src)
    a = cp.ascontiguousarray(a, dtype=dt)
    P, So, Q = src.shape
    S = a.shape[1]
    if a.shape[0] != So or So % S:
        raise ValueError(f"bilinear_adjoint: a {a.shape} does not fit src {src.shape}")
    _below_2_31("bilinear_adjoint plane", So * Q)
    dst = cp.empty((P, S, Q), dtype=dt)
    kernel("resample.cu", "bilinear_adjoint", dt)(
        *plane_geometry(P, S * Q),
        (src, a, dst, np.int64(P), np.int32(S), np.int32(So), np.int32(Q)))
    return dst


# ---------------------------------------------------------------------------
# Depthwise convolution (kernels/depthwise.cu); forward and dx geometry: plane_geometry
# ---------------------------------------------------------------------------

DW_CHUNK = 2048  # output pixels per work item of the dw partial sums (depthwise.cu: kDwChunk)


def depthwise_dw_geometry(planes: int, npix: int):
    """(grid, block) of depthwise_dw_partials: one 256-thread block per work item of DW_CHUNK
    output pixels, grid-stride over the planes * ceil(npix / DW_CHUNK) items."""
    items = planes * -(-npix // DW_CHUNK)
    return (int(max(1, min(items, _MAX_BLOCKS))),), (_BLOCK,)


def _dw_sizes(x_shape, w_shape, stride, padding):
    N, C, H, W = x_shape
    Co, _, k, _ = w_shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    _below_2_31("depthwise plane", max(H * W, Ho * Wo))
    ints = tuple(np.int32(v) for v in (C, Co // C, H, W, k, stride, padding, Ho, Wo))
    return N, C, Co, k, Ho, Wo, ints


def depthwise_forward(x, w, b, stride, padding):
    """See minunet.backend.twins.depthwise_forward. -> out (N, Co, Ho, Wo)."""
    cp = _cupy()
    dt = _float_dtype("depthwise_forward x", x)
    x, w, b = (cp.ascontiguousarray(a, dtype=dt) for a in (x, w, b))
    N, C, Co, k, Ho, Wo, ints = _dw_sizes(x.shape, w.shape, stride, padding)
    out = cp.empty((N, Co, Ho, Wo), dtype=dt)
    kernel("depthwise.cu", "depthwise_forward", dt)(
        *plane_geometry(N * Co, Ho * Wo), (x, w, b, out, np.int64(N * Co), *ints))
    return out


def depthwise_backward_dx(dout, w, x_shape, stride, padding):
    """See minunet.backend.twins.depthwise_backward_dx. -> dx (N, C, H, W)."""
    cp = _cupy()
    dt = _float_dtype("depthwise_backward_dx dout", dout)
    dout, w = (cp.ascontiguousarray(a, dtype=dt) for a in (dout, w))
    N, C, Co, k, Ho, Wo, ints = _dw_sizes(x_shape, w.shape, stride, padding)
    dx = cp.empty(tuple(x_shape), dtype=dt)
    H, W = x_shape[2:]
    kernel("depthwise.cu", "depthwise_backward_dx", dt)(
        *plane_geometry(N * C, H * W), (dout, w, dx, np.int64(N * C), *ints))
    return dx


def depthwise_dw_partials(dout, x, k, stride, padding):
    """See minunet.backend.twins.depthwise_dw_partials. -> (N, Co, k*k + 1) float64 (the
    kernel's partials of each work item, summed over the items of a plane here)."""
    cp = _cupy()
    dt = _float_dtype("depthwise_dw_partials dout", dout)
    dout, x = (cp.ascontiguousarray(a, dtype=dt) for a in (dout, x))
    Co = dout.shape[1]
    N, C, Co, k, Ho, Wo, ints = _dw_sizes(x.shape, (Co, 1, k, k), stride, padding)
    nq = -(-(Ho * Wo) // DW_CHUNK)
    part = cp.empty((N, Co, nq, k * k + 1), dtype=cp.float64)
    kernel("depthwise.cu", "depthwise_dw_partials", dt)(
        *depthwise_dw_geometry(N * Co, Ho * Wo),
        (dout, x, part, np.int64(N * Co), *ints, np.int32(nq)))
    return part.sum(axis=2)


# ---------------------------------------------------------------------------
# im2col / col2im with zero padding and stride (kernels/im2col_padded.cu)
# ---------------------------------------------------------------------------


def _out_width(W, k, s, p):
    return (W + 2 * p - k) // s + 1


def im2col_padded_geometry(C, H, W, k, s, p, y0, y1):
    """(grid, block) of im2col_padded: grid.x over the (y1-y0)*Wo columns, grid.y the C*k*k rows."""
    return (_blocks((y1 - y0) * _out_width(W, k, s, p)), min(C * k * k, _MAX_BLOCKS)), (_BLOCK,)


def col2im_padded_geometry(C, H, W, k, s, p, y0, y1):
    """(grid, block) of col2im_padded: grid.x over the band's pixels, grid.y over C."""
    band = max(0, min(H, s * (y1 - 1) - p + k) - max(0, s * y0 - p)) * W
    return (_blocks(band), min(C, _MAX_BLOCKS)), (_BLOCK,)


def im2col_padded(x, k, stride, padding, y0, y1, out):
    """See minunet.backend.twins.im2col_padded. x (C, H, W); out (C*k*k, (y1-y0)*Wo)."""
    cp = _cupy()
    dt = _float_dtype("im2col_padded input x", x)
    x = cp.ascontiguousarray(x)
    C, H, W = x.shape
    geo = tuple(int(v) for v in (k, stride, padding, y0, y1))
    L = (geo[4] - geo[3]) * _out_width(W, *geo[:3])
    _contiguous_out("im2col_padded out", out, (C * geo[0] ** 2, L), dt)
    _below_2_31("im2col_padded columns per row", L)
    _below_2_31("im2col_padded image plane H*W", H * W)
    kernel("im2col_padded.cu", "im2col_padded", dt)(
        *im2col_padded_geometry(C, H, W, *geo),
        (x, out, np.int32(C), np.int32(H), np.int32(W), *(np.int32(v) for v in geo)))
    return out


def col2im_padded(cols, k, stride, padding, y0, y1, dx):
    """See minunet.backend.twins.col2im_padded. dx (C, H, W) += the gather of cols."""
    cp = _cupy()
    dt = _float_dtype("col2im_padded cols", cols)
    cols = cp.ascontiguousarray(cols)
    C, H, W = dx.shape
    geo = tuple(int(v) for v in (k, stride, padding, y0, y1))
    L = (geo[4] - geo[3]) * _out_width(W, *geo[:3])
    _contiguous_out("col2im_padded dx", dx, (C, H, W), dt)
    if tuple(cols.shape) != (C * geo[0] ** 2, L):
        raise ValueError(f"col2im_padded cols {tuple(cols.shape)} do not match dx {(C, H, W)} "
                         f"with k, stride, padding, rows = {geo}: expected {(C * geo[0]**2, L)}")
    _below_2_31("col2im_padded image plane H*W", H * W)
    kernel("im2col_padded.cu", "col2im_padded", dt)(
        *col2im_padded_geometry(C, H, W, *geo),
        (cols, dx, np.int32(C), np.int32(H), np.int32(W), *(np.int32(v) for v in geo)))
    return dx
