"""The backend: the one place that knows about NumPy versus CuPy, threads and kernels.

One network, two doors, and what lies behind the fast one:

    plain ops      minunet/ops/*.py      the lesson: whole-array NumPy/CuPy, read like the math
    fast ops       minunet/fast/*.py     the speed: the same ops, chunked, threaded, fused
    CPU twins      backend/cpu.py        Numba loops the fast ops run on NumPy arrays
    GPU twins      kernels/*.cu          CUDA kernels the fast ops run on CuPy arrays,
                                         launched by backend/gpu.py

The backend, by concern:

    device.py      the array module and the device: xp_of, to_device, to_host,
                   gpu_status, ... (the only backend module the plain ops import)
    twins.py       the dispatchers: one signature per hot loop, CPU or GPU twin by array type
    chunks.py      chunk sizes, reusable workspaces, parallel_for over the workers
    threads.py     the CPU's worker threads beneath parallel_for
    cpu.py gpu.py  the twins themselves
    cpu_rows.py    the CPU's 3x3 conv loops without columns (for minunet/fast/conv.py)
    cpu_winograd.py  the CPU's Winograd F(2x2, 3x3) for it (neither has a GPU twin)

This file only gathers their public names, so `backend.xp_of`,
`backend.im2col`, `backend.workspace`, ... work as before. Imports flow one
way: the backend imports nothing of minunet outside itself. CuPy is imported
lazily (device.py), so `import minunet.backend` works without CuPy or a GPU;
Numba is imported when a CPU twin is first called.
"""

from __future__ import annotations

from .chunks import (
    CPU_CHUNK_BYTES,
    WORKSPACE_BYTES,
    Slot,
    chunk_bytes,
    parallel_for,
    release_workspaces,
    split,
    workers,
    workspace,
)
from .chunks import _workspaces as _workspaces  # private: read by tests of the fast conv
from .device import (
    GpuStatus,
    blas_kernel,
    device_info,
    gpu_status,
    is_gpu_array,
    is_out_of_memory,
    machine,
    peak_rss_mb,
    reset_peak_rss,
    resolve_device,
    set_tf32,
    to_device,
    to_host,
    xp_of,
)
from .device import _cupy as _cupy  # private: bench.py reaches for cupy through it
from .twins import (
    bias_relu_forward,
    bias_relu_rows,
    bilinear_adjoint,
    bilinear_forward,
    bn_backward_dx,
    bn_grad_partials,
    bn_normalize,
    bn_stats_partials,
    col2im,
    col2im_padded,
    depthwise_backward_dx,
    depthwise_dw_partials,
    depthwise_forward,
    im2col,
    im2col_padded,
    maxpool2x2_backward,
    maxpool2x2_forward,
    relu_backward,
    sgd_update,
    sgd_update_many,
    softmax_xent_backward,
    softmax_xent_forward,
    upconv_gather,
    upconv_scatter,
)

__all__ = [
    # device.py
    "is_gpu_array", "xp_of", "GpuStatus", "gpu_status", "device_info", "resolve_device",
    "to_device", "to_host", "is_out_of_memory", "set_tf32", "peak_rss_mb",
    "reset_peak_rss", "machine", "blas_kernel",
    # chunks.py
    "WORKSPACE_BYTES", "CPU_CHUNK_BYTES", "chunk_bytes", "Slot", "workspace", "release_workspaces",
    "workers", "split", "parallel_for",
    # twins.py
    "im2col", "col2im", "maxpool2x2_forward", "maxpool2x2_backward", "softmax_xent_forward",
    "softmax_xent_backward", "sgd_update", "sgd_update_many", "bias_relu_forward",
    "bias_relu_rows", "relu_backward", "upconv_scatter", "upconv_gather",
    "bn_stats_partials", "bn_grad_partials", "bn_normalize", "bn_backward_dx",
    "bilinear_forward", "bilinear_adjoint",
    "depthwise_forward", "depthwise_backward_dx", "depthwise_dw_partials",
    "im2col_padded", "col2im_padded",
]
