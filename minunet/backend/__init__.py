"""The backend: the one place that knows about NumPy versus CuPy.

Everything else in minunet asks this module which array library an array
belongs to (`xp_of`), moves arrays between host and device (`to_device`,
`to_host`), and calls the fast twins of the hot loops through the small
dispatchers below. CuPy is imported lazily, only when a CuPy array or the GPU
is asked for, so `import minunet` works (and stays fast) without CuPy or a GPU.

The hot loops have three implementations with one signature and one layout:

    plain NumPy reference   minunet/ops/*.py          (readable, used by tests/tutorials)
    CPU twin (Numba)        minunet/backend/cpu.py    (what runs on NumPy arrays)
    GPU twin (CUDA)         kernels/*.cu via backend/gpu.py (what runs on CuPy arrays)

Each dispatcher below picks the twin from its first argument's type.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "xp_of", "is_gpu_array", "to_device", "to_host", "gpu_status", "device_info",
    "resolve_device", "workspace", "workers", "split", "parallel_for", "im2col", "col2im",
    "maxpool2x2_forward", "maxpool2x2_backward", "softmax_xent_forward",
    "softmax_xent_backward", "sgd_update", "sgd_update_many", "bias_relu_forward",
    "relu_backward", "upconv_scatter", "upconv_gather",
]


def is_gpu_array(a) -> bool:
    """True for a CuPy array, without importing CuPy."""
    return type(a).__module__.split(".")[0] == "cupy"


def xp_of(*arrays):
    """The array module (numpy or cupy) of the given arrays; they must agree.

    Python scalars and None are ignored. Raises ValueError for a mix of host and
    device arrays, naming the fix (move them with `to_device` / `to_host`).
    """
    kinds = {is_gpu_array(a) for a in arrays if isinstance(a, np.ndarray) or is_gpu_array(a)}
    if len(kinds) > 1:
        raise ValueError(
            "got a mix of NumPy (host) and CuPy (device) arrays; move them all to one place "
            "with minunet.backend.to_device(...) or to_host(...)"
        )
    if kinds == {True}:
        return _cupy()
    return np


@functools.lru_cache(maxsize=1)
def _cupy():
    import cupy  # the only import of cupy in minunet

    return cupy


@dataclass(frozen=True)
class GpuStatus:
    """Whether a CUDA GPU can be used, and if not, why not (readable)."""

    available: bool
    reason: str
    name: str = ""
    memory_bytes: int = 0
    compute_capability: str = ""


@functools.lru_cache(maxsize=1)
def gpu_status() -> GpuStatus:
    """Probe CuPy and the CUDA device once; never raises."""
    try:
        import cupy
    except ImportError:
        return GpuStatus(False, "CuPy is not installed (pip install 'minunet[cuda12]' or "
                                "'minunet[cuda13]' to match your CUDA driver)")
    except Exception as e:  # a broken CuPy install raises many things
        return GpuStatus(False, f"CuPy failed to import: {type(e).__name__}: {e}")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return GpuStatus(False, f"CuPy found no usable CUDA driver/device: {e}")
    if n == 0:
        return GpuStatus(False, "CuPy is installed but no CUDA GPU is visible")
    dev = cupy.cuda.Device(0)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = dev.mem_info
    return GpuStatus(True, "ok", name, int(total), str(dev.compute_capability))


def device_info() -> str:
    """One line saying what will run: the GPU's name and memory, or the CPU and why."""
    st = gpu_status()
    if st.available:
        return f"GPU: {st.name} (sm_{st.compute_capability}, {st.memory_bytes / 2**30:.0f} GiB)"
    import os

    return f"CPU: {os.cpu_count()} cores (no GPU: {st.reason})"


def resolve_device(device: str = "auto") -> str:
    """Map 'auto' | 'cpu' | 'cuda' to 'cpu' or 'cuda'; 'cuda' without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return "cpu"
    st = gpu_status()
    if device == "cuda" and not st.available:
        raise RuntimeError(f"--device cuda was asked for, but {st.reason}; use --device cpu")
    return "cuda" if st.available else "cpu"


def to_device(a, device: str = "cuda"):
    """Copy a host array to `device` ('cuda' or 'cpu'); arrays already there are returned."""
    if device == "cpu":
        return to_host(a)
    cp = _cupy()
    return cp.asarray(a)


def to_host(a) -> np.ndarray:
    """A NumPy array (copies device arrays to the host, returns host arrays unchanged)."""
    if is_gpu_array(a):
        return a.get()
    return np.asarray(a)


# ---------------------------------------------------------------------------
# Workspace: one reusable scratch buffer per (array module, dtype, slot).
# The im2col column matrices of the big layers would be hundreds of MB; the ops
# work in row chunks that fit WORKSPACE_BYTES and reuse this buffer instead of
# allocating (and page-faulting) a new one for every chunk of every call.
# ---------------------------------------------------------------------------

WORKSPACE_BYTES = 64 * 2**20  # upper bound for one column matrix (per slot)
CPU_CHUNK_BYTES = 4 * 2**20  # on the CPU, chunks this big stay in cache from im2col to GEMM


def chunk_bytes(xp) -> int:
    """Target size of one im2col chunk: cache-sized on the CPU, WORKSPACE_BYTES on the GPU."""
    return min(CPU_CHUNK_BYTES, WORKSPACE_BYTES) if xp is np else WORKSPACE_BYTES
_workspaces: dict = {}


def workspace(xp, dtype, n: int, slot=0):
    """A 1-D scratch array of `n` elements of `dtype`, reused between calls.

    Contents are garbage. Slots (any hashable) let an op hold several workspaces
    at once: the column matrix and its gradient, one pair per worker thread
    (slot=(0, worker), (1, worker)). The buffer only grows.
    """
    dtype = np.dtype(dtype)
    key = (xp.__name__, dtype.str, slot)
    buf = _workspaces.get(key)
    if buf is None or buf.size < n:
        buf = xp.empty(n, dtype=dtype)
        _workspaces[key] = buf
    return buf[:n]


def workers(xp) -> int:
    """How many chunks `parallel_for` works on at once: the CPU's worker threads, 1 on the GPU."""
    if xp is np:
        from . import threads

        return threads.workers()
    return 1


def split(xp, R: int) -> list[tuple[int, int]]:
    """Rows 0..R-1 (channels, planes) cut into one block (r0, r1) per worker of `parallel_for`."""
    from . import threads

    return threads.split(R, workers(xp))


def parallel_for(xp, items, fn) -> None:
    """Call fn(item, worker) for every item, worker in 0..workers(xp)-1.

    On the CPU the items run on one thread per core (see backend/threads.py:
    worker w takes items[w::T], in order); on the GPU they run in order on the
    calling thread (worker 0) and queue on the current stream. Each worker
    should use its own workspace slots, e.g. workspace(xp, dtype, n, slot=(0, worker)).
    """
    if xp is np:
        from . import threads

        threads.parallel_for(items, fn)
    else:
        for item in items:
            fn(item, 0)


def release_workspaces() -> None:
    """Free the cached workspaces (e.g. before measuring peak memory)."""
    _workspaces.clear()


# ---------------------------------------------------------------------------
# Dispatchers: one signature, the twin chosen by the array type.
# ---------------------------------------------------------------------------


def _twin(a):
    if is_gpu_array(a):
        from . import gpu

        return gpu
    from . import cpu

    return cpu


def im2col(x, k: int, y0: int, y1: int, out):
    """Columns of a valid k x k convolution for output rows y0..y1-1 of one image.

    x: (C, H, W) contiguous; out: (C*k*k, (y1-y0)*Wo) with Wo = W-k+1, filled as
    out[(c*k + i)*k + j, (y-y0)*Wo + xx] = x[c, y+i, xx+j]. Returns out.
    """
    return _twin(x).im2col(x, k, y0, y1, out)


def col2im(cols, k: int, y0: int, y1: int, dx):
    """Adjoint of im2col: add the column gradients back into dx (C, H, W) in place.

    cols: (C*k*k, (y1-y0)*Wo). Gather form: each input pixel sums the column
    entries that were copied from it (deterministic, no atomics). Returns dx.
    """
    return _twin(cols).col2im(cols, k, y0, y1, dx)


def maxpool2x2_forward(x):
    """(N, C, H, W) -> out (N, C, H/2, W/2), arg (N, C, H/2, W/2) uint8 in 0..3."""
    return _twin(x).maxpool2x2_forward(x)


def maxpool2x2_backward(dout, arg):
    """(N, C, H/2, W/2) upstream gradient and arg-max -> dx (N, C, H, W)."""
    return _twin(dout).maxpool2x2_backward(dout, arg)


def softmax_xent_forward(logits, labels, weights):
    """Fused softmax + weighted cross-entropy; returns (loss_sum, probs).

    logits (N, K, H, W); labels (N, H, W) int; weights (N, H, W).
    loss_sum = sum_x w(x) * -log p_{l(x)}(x) (a 0-d array); probs (N, K, H, W).
    """
    return _twin(logits).softmax_xent_forward(logits, labels, weights)


def softmax_xent_backward(probs, labels, weights, scale):
    """dlogits = scale * w(x) * (probs - onehot(labels)), (N, K, H, W)."""
    return _twin(probs).softmax_xent_backward(probs, labels, weights, scale)


def sgd_update(w, v, g, lr: float, momentum: float, weight_decay: float) -> None:
    """One momentum-SGD step in place, Caffe convention (Jia et al. 2014):

        v <- momentum * v - lr * (g + weight_decay * w);   w <- w + v

    w, v, g: contiguous arrays of one shape and dtype (one pass over memory).
    """
    _twin(w).sgd_update(w, v, g, lr, momentum, weight_decay)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure of NumPy (MemoryError) or CuPy (OutOfMemoryError)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def set_tf32(enabled: bool) -> None:
    """Allow TF32 tensor-core GEMMs in CuPy (off by default: plain fp32, as the tests assume).

    CuPy reads CUPY_TF32 when it loads its linear-algebra routines, so call this
    before the first GPU computation.
    """
    import os

    os.environ["CUPY_TF32"] = "1" if enabled else "0"


def sgd_update_many(ws, vs, gs, lr: float, momentum: float, weight_decay: float) -> None:
    """`sgd_update` over lists of arrays (every parameter of a model); one launch on the GPU."""
    if ws:
        _twin(ws[0]).sgd_update_many(ws, vs, gs, lr, momentum, weight_decay)


def bias_relu_forward(x, b):
    """The conv epilogue, fused: x = max(x + b[c], 0) IN PLACE for x (N, C, H, W), b (C,)."""
    return _twin(x).bias_relu_forward(x, b)


def relu_backward(dout, out, dx=None):
    """dx = dout where out > 0, else 0 (out is the ReLU's output; any shape).

    dx: a contiguous array of the same shape to write into (a workspace), or None
    for a new array. Returns dx.
    """
    return _twin(dout).relu_backward(dout, out, dx)


def upconv_scatter(cols, b):
    """cols (N, Cout, 2, 2, H, W), b (Cout,) -> out (N, Cout, 2H, 2W):
    out[n, o, 2y+i, 2x+j] = cols[n, o, i, j, y, x] + b[o]."""
    return _twin(cols).upconv_scatter(cols, b)


def upconv_gather(dout):
    """The inverse rearrangement: dout (N, Cout, 2H, 2W) -> dcols (N, Cout, 2, 2, H, W)."""
    return _twin(dout).upconv_gather(dout)
