"""The fast conv2d: the plain op of minunet/ops/conv.py, in cache-sized row chunks on every core.

Same names, signatures, cache (ops.conv.Conv2dCache) and numbers as the plain op
(tests/fast/test_agree.py); read that file first for the math. The tricks, and
what each buys:

- Row chunks. The plain op's column matrix for the paper's second layer (64
  channels, 568 x 568 output) is 64*9*568*568*4 bytes = 743 MB. Here both passes
  work on chunks of output rows whose columns fit `backend.chunk_bytes` (4 MB on
  the CPU, small enough to stay in cache between im2col and the GEMM; at most
  `WORKSPACE_BYTES` = 64 MB on the GPU), in reused workspaces: bounded memory,
  no page faults, and the GEMM reads its operand from cache. The backward
  recomputes each chunk's columns rather than keeping them.
- Twins. im2col and col2im of a chunk run as Numba loops on the CPU
  (backend/cpu.py) and CUDA kernels on the GPU (kernels/im2col.cu); col2im is a
  gather (each pixel sums its own entries), deterministic, no atomics.
- Worker threads. The chunks are independent, so `backend.parallel_for` runs
  them on every CPU core at once, each worker with a single-threaded BLAS (one
  after another on the GPU, where each chunk fills the device). Each worker takes
  one run of consecutive chunks (`_blocks`): ONE thread dispatch per layer and
  direction (it was two forward, for the GEMMs and then the epilogue, and two
  backward, for the even and then the odd chunks: at 316/8 a step had 100
  dispatches, about 80 us each when idle, and each a barrier where a worker that
  the OS has descheduled on a shared machine holds the other up). Each worker has
  its own workspaces and its own dw, db sums, added in worker order. In the
  backward, col2im of a chunk also adds into the k-1 input rows below it, which
  the next chunk adds into too: inside a run that is the same worker, one chunk
  after the other; the first chunk of every run but the first adds its dx into a
  private halo (its rows, k-1 more) that is added into dx after the dispatch, in
  worker order. Every sum has a fixed order: the same numbers run to run.
- Direct loops for few input channels (Cin*k*k <= DIRECT_MAX = 9: the U-Net's
  first layer, one channel, 3x3). There the column matrix is 9 shifted copies of
  the image and the GEMM a (Cout x 9) @ (9 x L) product that BLAS runs at a few
  GFLOP/s (4-5 at 572/16 and 316/8, measured with `bench --layers`); on the CPU
  the forward reads the image's rows in place (backend/cpu.py direct_conv_rows: 9
  multiply-adds per pixel in registers, bias and ReLU fused) and the backward sums
  dw, db from the rows in float64 (direct_dw_rows); dx, when asked, keeps the
  GEMM + col2im. It buys about 20% of that layer's time (572/16: 23 -> 17 ms of
  forward + backward, 16 -> 13 ms of CPU time, on a shared 2-core machine).
- Rows loops for few channels (3x3, Cin and Cout <= ROWS_MAX = 16: the U-Net's top
  levels at base 8 and 16). The GEMM has only Cout = 8-16 rows there and BLAS runs
  it at 20-60 GFLOP/s, behind an im2col copy as long as the product. The rows loops
  (backend/cpu_rows.py) read the image in place, four output rows per pass (80
  GFLOP/s on one core); the backward writes the gradient after the ReLU mask once,
  zero-padded, and gets dx as the same loops over it with the flipped weights (a
  gather: each dx row is one chunk's, no col2im, no halo) and dw as nine dot
  products per channel pair over the chunk's rows as one run. 316/8, 8 -> 8
  channels at 312 px, one thread: forward 3.8 -> 1.7 ms, dx 2.8 -> 1.7, dw 4.7 -> 1.5.
- Winograd F(2x2, 3x3) for more channels (Lavin & Gray 2016; backend/cpu_winograd.py):
  the forward and, on the padded gradient, dx as 16 GEMMs of the transformed filters
  and tiles per chunk: 2.25x fewer GEMM flops, and its transformed input is 4 values
  per output pixel and channel where im2col copies 9. 572/16, 64 -> 64 channels at 136
  px, one thread: forward 18 -> 11 ms, dx 16 -> 13. Its float32 error is that of a
  summation order (backend/cpu_winograd.py; tests/fast/test_conv_paths.py).
  At the paper's widths (572/64) the backward's chunks hold only the gradient's rows
  (no columns): every 3x3 layer but the first, forward and backward, one thread: 13.1 s
  (GEMM), 11.4 (b2ec7fe's rule), 9.0 (the rows loops' dw everywhere).
  Memory: these loops take the GEMM path's workspace slots (Winograd's tiles and
  products those of the columns and their gradient, the padded and the flat gradient
  those too), within the same bytes, and the transformed filters are a workspace of
  their own only up to chunk_bytes; above it (64 MB at 1024 x 1024 channels) each
  call's own array, not a workspace that would live on in the step's peak (572/64,
  bench without PyTorch: 1462 MB with them in a workspace, 1396 without, the GEMM path
  1391; with PyTorch in the same bench run: 1487 now, the GEMM path 1467).
  `_plan` picks the loops of each layer and direction, with the measurements behind
  it; MINUNET_CONV_PATH=gemm turns the rows loops and Winograd off (im2col + GEMM, as
  before them), for A/B timings.
- Shifted GEMMs for dw where many channels meet a small image (Cin*Cout/4096 >= Wo/48:
  64 channels up to 48 px, 128 up to 192, 256 and more at every U-Net size up to 572):
  the chunk's flat gradient rows times x's flat rows shifted by each (i, j) of the
  kernel, nine GEMMs on views of x, no copy (`_shifted_dw`): the rows loops' dw read x
  once per pair of output channels, BLAS blocks for its cache. 572/64 training step, CPU
  time of both workers: 9.9 -> 9.2 s, the same peak.
- Fused epilogue. Bias and ReLU in one pass over the output; on the CPU each chunk
  runs it (backend.bias_relu_rows) right after its GEMM, while the chunk's output
  is still in cache and in the same dispatch; on the GPU one launch over the whole
  output (backend.bias_relu_forward). The backward applies the ReLU mask chunk by
  chunk.
"""

from __future__ import annotations

import mmap
import os
from typing import NamedTuple

import numpy as np

from .. import backend
from ..ops._check import check_conv2d, check_dout
from ..ops.conv import Conv2dCache


def _row_chunks(N, Ho, k, xp, row_bytes, multiple=1, room=None):
    """Chunks (n, y0, y1) of output rows, image by image, for `backend.parallel_for`.

    Each chunk's column matrix (or another loop's workspace: row_bytes per output row)
    fits `backend.chunk_bytes`; an image has at least two
    chunks per worker when it is tall enough, and every chunk is at least k-1 rows
    tall (so that only neighbouring chunks touch the same input rows) and a multiple
    of `multiple` rows (Winograd's tile rows are 2 output rows), but the image's last.
    One chunk per worker was tried (fewer Python calls per layer): 316/8 gained
    (75 -> 62 ms) but 572/16 lost 17% of CPU time (bigger chunks fall out of cache).
    room: the bytes a chunk may take instead of chunk_bytes (Winograd's, `_wino_room`).
    """
    fit = (room or backend.chunk_bytes(xp)) // max(1, row_bytes)
    T = backend.workers(xp)
    per_worker = -(-Ho // (2 * T)) if T > 1 else Ho  # ceil(Ho / 2T)
    step = max(1, k - 1, min(fit, per_worker))
    step = max(multiple, step - step % multiple)  # a multiple: rounded down, so that the
    # chunk's workspaces stay within chunk_bytes
    return [(n, y0, min(Ho, y0 + step)) for n in range(N) for y0 in range(0, Ho, step)]


DIRECT_MAX = 9  # Cin*k*k up to this: the direct loops on the CPU (the U-Net's first layer)


def _direct(x, k) -> bool:
    """Whether a conv of x (N, Cin, H, W) with a k x k kernel runs the direct loops: on the
    CPU, for k > 1 (a 1x1 conv has no columns to save) and Cin*k*k <= DIRECT_MAX."""
    return not backend.is_gpu_array(x) and k > 1 and x.shape[1] * k * k <= DIRECT_MAX


ROWS_MAX = 16  # Cin and Cout up to this (3x3, CPU): the rows loops for all three
TINY_WO = 16  # output widths below this (3x3, CPU, more channels): the GEMM's backward
SHIFTED_WO = 48  # dw by nine GEMMs on shifted views where Cin*Cout/4096 >= Wo/SHIFTED_WO
PATHS = ("auto", "gemm")  # MINUNET_CONV_PATH: the rule below, or im2col + GEMM everywhere


class Plan(NamedTuple):
    """The loops of one conv layer, per direction: "gemm", "direct", "rows", "winograd"."""

    forward: str
    dx: str
    dw: str


def _plan(x, w) -> Plan:
    """Which loops a conv of x (N, Cin, H, W) with w (Cout, Cin, k, k) runs: the one rule.

    "gemm"      im2col + GEMM (+ col2im for dx): the GPU, 1x1, odd output widths, and all
                but the first layer when MINUNET_CONV_PATH=gemm (the path before the others)
    "direct"    the first layer (Cin*k*k <= DIRECT_MAX, `_direct`): forward and dw; dx gemm
    "rows"      backend/cpu_rows.py: the forward four output rows at a time; dx as the
                same loops over the zero-padded gradient (a gather); dw as nine dot
                products per channel pair over the chunk's rows (float64 sums up to 4 MB)
    "winograd"  backend/cpu_winograd.py, F(2x2, 3x3): the forward, or dx on the padded
                gradient; needs an even output width
    "shifted"   dw only: the chunk's gradient rows (as the rows loops lay them out, one flat
                run) times nine shifted views of x's flat rows, nine GEMMs and no copy
                (`_shifted_dw`)

    On the CPU, for 3x3: all rows when Cin, Cout <= ROWS_MAX; else, with an even width,
    the forward by Winograd and the backward: the GEMM's when Wo < TINY_WO; else dx by the
    rows when Cin <= 16 or (Cin <= 32 and Wo >= 256), else by Winograd, and dw shifted
    where Cin*Cout/4096 >= Wo/48 (many channels on a small image), else by the rows.

    The numbers behind the rule: CPU time of one thread (time.thread_time) on a 2-core
    AMD EPYC (AVX-512, OpenBLAS, float32, the other core busy), one image, each candidate
    on the same row chunks, alternating, medians of 3-5, ms; the U-Net's layers at 316/8
    and 572/16 (issue 28):

        layer                forward                dx                   dw
        (Cin->Cout, Wo)      gemm  rows  winograd   gemm  rows  winograd  gemm  rows
        8->8, 312            3.8   1.7   3.0        2.8   1.7   3.3       4.7   1.5
        16->16, 568          30    18    22         31    22    34        44    19
        16->8, 134           1.4   0.7   1.0        1.1   0.7   0.9       1.6   0.6
        16->32, 282          13    9.9   9.6        11    9.0   13        15    9.4
        32->32, 280          24    18    15         26    20    24        35    19
        32->16, 390          28    18    19         27    17    22        38    19
        32->32, 72           1.9   1.5   1.1        1.4   1.7   1.1       1.6   1.2
        64->64, 136          18    17    11         16    20    13        21    18
        64->64, 32           1.2   1.1   0.6        1.0   1.5   0.7       1.1   1.4
        128->128, 64         15    18    8.5        14    23    10        17    18
        256->256, 28         11    24    8.8        12    33    10        18    18
        64->128, 14          0.4   1.1   0.4        0.5   0.5   0.5       0.5   0.8
        128->128, 12         0.6   1.1   0.6        0.7   2.2   0.6       0.8   1.2

    and at the paper's widths, 572/64, each layer timed on 24 of its rows (all rows up to
    64 px) and scaled to the layer, with the chunks below:

        64->64, 568          333   277   230        345   324   228       348   323
        128->128, 280        297   262   168        293   351   197       329   311
        256->256, 136        258   282   135        253   398   190       327   298
        512->512, 64         227   263   121        213   361   158       470   281
        512->1024, 30        94    240   81         92    172   141       262   138
        1024->1024, 28       164   364   139        177   519   271       683   251
        1024->512, 54        331   581   211        343   474   202       903   388
        128->64, 390         287   263   200        322   293   172       315   289

    (gemm's dx includes col2im, its dw the im2col; the gradient's mask/padding pass, the
    same for all, is left out of the first table and in dw's column of the second.) The
    GEMM runs at 20-60 GFLOP/s with Cout = 8-16 rows; the rows loops at 60-80 whatever the
    channels, but their forward and dx grow with Cin*Cout while Winograd's GEMMs do 2.25x
    fewer flops and its transforms grow with Cin + Cout. dw is another matter: the GEMM's
    writes a (Cout, Cin*9) product per chunk and adds it to the worker's sum, and with
    chunks of a few rows (its columns fit 4 MB: 3 rows at 1024 channels) that traffic, not
    the flops, is its time at 512-1024 channels (20 GFLOP/s); the rows loops' chunks need
    only the gradient's rows (`_gather_backward`), so they add into dw once or twice per
    worker. With commit b2ec7fe's rule (the GEMM's backward for more than 32 channels and
    Wo < 96) and chunks, the 572/64 bottleneck's backward was 911 ms, here 522. Only on
    tiny images (316/8's bottleneck, 12-14 px) does the GEMM's dw still win, and Winograd's
    dx did not pay for its own pass over the gradient there (64->128 at 14 px: backward 0.9
    ms with the GEMM's, 1.1 with Winograd's dx), so those layers keep the GEMM's whole
    backward. At 512-1024 channels on 28-30 px the GEMM's dx still beats Winograd's
    (1024->1024: 177 against 271 ms) but there is no GEMM dx beside the rows loops' dw.
    The rows loops' dw reads each x row once per pair of output channels: at 64 channels
    and more that is most of its time, while nine GEMMs of the chunk's flat gradient rows
    with x's rows shifted by (i, j) (`_shifted_dw`: x read in place, BLAS with x's plane
    size as its leading dimension) run at BLAS's rate, from about 4,096 channel pairs on 48
    px (dw, one thread, same chunks, medians of 5, ms: rows / shifted):

        64->64, 20: 0.77 / 0.56      64->64, 32: 1.39 / 1.19      64->64, 62: 4.1 / 4.7
        128->64, 22: 2.3 / 1.3       64->128, 66: 11.7 / 9.9      128->64, 102: 23.6 / 25.1
        128->128, 64: 16.6 / 14.5    128->128, 280: 292 / 285     64->64, 568: 292 / 331
        256->256, 136: 297 / 260     512->512, 64: 303 / 227      1024->1024, 28: 361 / 187
        512->1024, 30: 175 / 99      1024->512, 54: 474 / 342     256->512, 66: 162 / 119

    MINUNET_CONV_PATH=gemm turns it all off, for A/B timings.
    """
    Cout, Cin, k, _ = w.shape
    if _direct(x, k):
        return Plan("direct", "gemm", "direct")
    choice = os.environ.get("MINUNET_CONV_PATH", "auto").strip() or "auto"
    if choice not in PATHS:
        raise ValueError(f"MINUNET_CONV_PATH must be one of {', '.join(PATHS)}, got {choice!r}")
    Wo = x.shape[3] - k + 1
    if backend.is_gpu_array(x) or k != 3 or choice == "gemm":
        return Plan("gemm", "gemm", "gemm")
    if max(Cin, Cout) <= ROWS_MAX:
        return Plan("rows", "rows", "rows")
    if Wo % 2:
        return Plan("gemm", "gemm", "gemm")
    if Wo < TINY_WO:  # a tiny image: the GEMM's backward
        return Plan("winograd", "gemm", "gemm")
    return Plan("winograd", "rows" if Cin <= 16 or (Cin <= 32 and Wo >= 256) else "winograd",
                "shifted" if SHIFTED_WO * Cin * Cout >= 4096 * Wo else "rows")


def _blocks(chunks, T):
    """The chunks cut into T runs of consecutive chunks, one run per worker, in order.

    A worker's run is one item of `backend.parallel_for` (one dispatch per layer and
    direction), and its chunks lie next to each other, so only the first chunk of a
    run shares input rows with another worker's chunk (the last one of the run before).
    """
    step = -(-len(chunks) // max(1, T))  # ceil(len / T)
    return [chunks[i : i + step] for i in range(0, len(chunks), step)]


def _each(fn):
    """fn(chunk, worker) for each chunk of a run: the item function of a run of chunks."""
    def run(block, worker):
        for chunk in block:
            fn(chunk, worker)
    return run


def _columns(x1, k, y0, y1, worker):
    """Columns of one image x1 (C, H, W) for output rows y0..y1-1, in the worker's workspace."""
    C, H, W = x1.shape
    if k == 1:  # a 1x1 conv needs no copy: the image itself is the column matrix
        return x1.reshape(C, H * W)[:, y0 * W : y1 * W]  # (C, rows*W)
    Wo = W - k + 1
    xp = backend.xp_of(x1)
    buf = backend.workspace(xp, x1.dtype, C * k * k * (y1 - y0) * Wo,
                            slot=backend.Slot("cols", worker))
    return backend.im2col(x1, k, y0, y1, buf.reshape(C * k * k, (y1 - y0) * Wo))


def _add_bias(out, b, relu):
    """The epilogue, in place: out += b per channel, then max(out, 0) if relu.

    out (N, C, H, W); the (image, channel block) pieces run on all workers.
    """
    xp = backend.xp_of(out)
    N, C = out.shape[:2]

    def piece(item, worker):
        n, c0, c1 = item
        o, bc = out[n : n + 1, c0:c1], b[c0:c1]  # contiguous slices
        if relu:
            backend.bias_relu_forward(o, bc)
        else:
            o += bc[None, :, None, None]

    blocks = [(n, c0, c1) for n in range(N) for c0, c1 in backend.split(xp, C)]
    backend.parallel_for(xp, blocks, piece)


_MULTIPLE = {"winograd": 2, "rows": 4}  # chunk heights: whole tile rows; whole 4-row passes


def _wino_row_bytes(Cin, Cout, Wo, itemsize):
    """Bytes per output row of Winograd's per-chunk workspaces, V (16, Cin, tiles) and M (16,
    Cout, tiles) together: 4 values per output pixel and channel of each."""
    return 4 * (Cin + Cout) * Wo * itemsize


def _wino_room(U):
    """The bytes Winograd's V and M of one chunk (or run) may take: chunk_bytes, or as many
    as the transformed filters U where those outweigh it (256 x 512 channels and more), in
    arrays of the chunk's own, freed with it. Each chunk packs the 16 GEMMs' (Cout, Cin)
    operand anew, as costly as the product itself when a chunk has ~30 tiles (572/64,
    dx of 1024 -> 1024 at 28 px: 323 -> 271 ms, of 1024 -> 512 at 54 px: 349 -> 202 ms);
    such layers' images are small, and the step's peak comes with the big top layers."""
    return max(backend.chunk_bytes(np), U.nbytes)


def _own(shape, dtype):
    """An array of its own in an anonymous memory map, unmapped when the array is freed.

    A block from np.empty under glibc's mmap threshold (32 MB, backend/heap.py) comes from
    a heap, per thread for the workers, and stays resident once freed: Winograd's
    transient filters and tiles raised the 572/64 step's peak by 30 MB that way. The map is
    private and asks for 2 MB pages: Python's default, a shared map, is faulted in 4 KB
    at a time (572/64: 275,000 page faults a step, 1.8 s of system time; now 53,000, 1.0 s).
    """
    n = int(np.prod(shape))
    size = max(1, n * np.dtype(dtype).itemsize)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux: private, in 2 MB pages where the kernel has
        # them (a shared map, mmap's default, is shmem: 4 KB pages, each a page fault)
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
    else:
        buf = mmap.mmap(-1, size)
    return np.frombuffer(buf, dtype=dtype, count=n).reshape(shape)


def _filters(shape, dtype, name):
    """An array for Winograd's transformed filters (16, Co, Ci): up to chunk_bytes (316/8 and
    572/16: at most 4 MB) the workspace slot `name` (no page faults; a map of its own per
    call, faulted in 4 KB at a time as maps then were, doubled the forward of 316/8's
    bottleneck, 0.6 -> 1.1 ms), above it (the paper's 512-1024 channels, up to 64 MB) a
    map of its own (`_own`), so that it leaves the step's peak when freed."""
    return _wino_space(int(np.prod(shape)), dtype, backend.Slot(name)).reshape(shape)


def _wino_space(n, dtype, slot):
    """n values (V, M or the filters): the slot's workspace if they fit chunk_bytes, else
    an array of their own (`_own`)."""
    if n * np.dtype(dtype).itemsize <= backend.chunk_bytes(np):
        return backend.workspace(np, dtype, n, slot=slot)
    return _own((n,), dtype)


def _winograd_rows(x1, xr0, R, U, w, b, relu, out3, or0, V, M):
    """R output rows or0.. of a valid 3x3 conv of x1 (Cin, Hx, Wx) from its rows xr0.. into
    out3 (Cout, Ho3, Wx-2), by Winograd F(2x2, 3x3) (backend/cpu_winograd.py): U (16, Cout,
    Cin) the transformed w (Cout, Cin, 3, 3); an odd last row by the rows loops (w may be None
    when R is even). V, M: 1-D workspaces of at least 16*Cin*(R//2)*Tw and 16*Cout*(R//2)*Tw
    values, Tw = (Wx-2)/2, for the transformed tiles and the 16 products."""
    from ..backend import cpu_rows, cpu_winograd

    Cin, Cout, Tw = x1.shape[0], out3.shape[0], out3.shape[2] // 2
    nt = R // 2  # tile rows
    if nt:
        V = V[: 16 * Cin * nt * Tw].reshape(16, Cin, nt * Tw)
        M = M[: 16 * Cout * nt * Tw].reshape(16, Cout, nt * Tw)
        cpu_winograd.winograd_input(x1, xr0, nt, V)
        np.matmul(U, V, out=M)  # 16 GEMMs (Cout, Cin) @ (Cin, tiles)
        cpu_winograd.winograd_output(M, b, relu, out3, or0, nt)
    if R % 2:
        cpu_rows.conv3_rows(x1, xr0 + R - 1, w, b, relu, out3, or0 + R - 1, 1)


def conv2d_forward(x, w, b, relu=False):
    """Valid 2-D convolution (cross-correlation), stride 1, with bias (and a fused ReLU).

    x: (N, Cin, H, W); w: (Cout, Cin, k, k); b: (Cout,)
    out[n, o, y, xx] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, y+i, xx+j]
    relu=True applies max(out, 0) in the same pass as the bias (the U-Net's 3x3
    layers): the same result as relu_forward(conv2d_forward(x, w, b)), one pass
    over memory fewer.
    Returns out (N, Cout, H-k+1, W-k+1) and a Conv2dCache.
    """
    check_conv2d(x, w, b)
    xp = backend.xp_of(x, w, b)
    x = xp.ascontiguousarray(x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    out = xp.empty((N, Cout, Ho, Wo), dtype=x.dtype)

    fused = not backend.is_gpu_array(x)  # the CPU: the epilogue runs on each chunk, in the
    # same dispatch as its GEMM
    bias = b.astype(x.dtype, copy=False)
    path = _plan(x, w).forward
    if path != "gemm":
        from ..backend import cpu, cpu_rows, cpu_winograd
        wc = xp.ascontiguousarray(w)
    if path == "winograd":  # the transformed filters (16, Cout, Cin): a workspace up to
        # chunk_bytes, else this call's own array (`_filters`)
        U = cpu_winograd.winograd_filter(wc, _filters((16, Cout, Cin), x.dtype, "wino_u"))

    def conv_chunk(chunk, worker):
        n, y0, y1 = chunk
        if path == "direct":  # no columns: shifted rows of the image, bias and ReLU fused
            cpu.direct_conv_rows(x[n], wc, bias, y0, y1, relu, out[n])
            return
        if path == "rows":  # no columns: four output rows at a time, bias and ReLU fused
            cpu_rows.conv3_rows(x[n], y0, wc, bias, relu, out[n], y0, y1 - y0)
            return
        if path == "winograd":  # V, M in the slots of the GEMM's columns and their gradient
            nt, Slot = (y1 - y0) // 2, backend.Slot
            V = _wino_space(16 * Cin * nt * (Wo // 2), x.dtype, Slot("cols", worker))
            M = _wino_space(16 * Cout * nt * (Wo // 2), x.dtype, Slot("dcols", worker))
            _winograd_rows(x[n], y0, y1 - y0, U, wc, bias, relu, out[n], y0, V, M)
            return
        cols = _columns(x[n], k, y0, y1, worker)  # (Cin*k*k, (y1-y0)*Wo)
        o2 = out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, (y1-y0)*Wo)
        xp.matmul(w2, cols, out=o2)
        if fused:  # bias (and ReLU) while the chunk's output is still in cache
            backend.bias_relu_rows(o2, bias, relu)

    if path == "winograd":  # V and M together within _wino_room
        chunks = _row_chunks(N, Ho, k, xp, _wino_row_bytes(Cin, Cout, Wo, x.itemsize), 2,
                             _wino_room(U))
    else:  # the columns within chunk_bytes
        chunks = _row_chunks(N, Ho, k, xp, Cin * k * k * Wo * x.itemsize,
                             _MULTIPLE.get(path, 1))
    backend.parallel_for(xp, _blocks(chunks, backend.workers(xp)), _each(conv_chunk))
    if not fused:  # the GPU: one launch over the whole output
        _add_bias(out, b, relu)
    return out, Conv2dCache(x, w, out if relu else None)


def conv2d_backward(dout, cache, need_dx=True):
    """Gradients of conv2d_forward.

    dout: (N, Cout, Ho, Wo), the gradient of the output (after the ReLU, if fused).
    Returns (dx (N, Cin, H, W), dw (Cout, Cin, k, k), db (Cout,)); dx is None when
    need_dx is False (the network's first layer).
    """
    x, w, out = cache
    xp = backend.xp_of(dout, x)
    N, Cin, H, W = x.shape
    Cout, _, k, _ = w.shape
    Ho, Wo = H - k + 1, W - k + 1
    check_dout("conv2d", dout, (N, Cout, Ho, Wo))
    dout = xp.ascontiguousarray(dout)
    w2 = xp.ascontiguousarray(w).reshape(Cout, Cin * k * k)  # (Cout, Cin*k*k)
    T = backend.workers(xp)
    plan = _plan(x, w)
    if plan.dw in ("rows", "shifted"):  # dx a gather: no col2im, no halos
        return _gather_backward(dout, x, w, out, need_dx, plan)
    direct = plan.forward == "direct"
    acc = np.float64 if direct else x.dtype  # the direct loops sum dw, db in float64
    dw_parts = [xp.zeros((Cout, Cin * k * k), dtype=acc) for _ in range(T)]  # per worker
    db_parts = [xp.zeros(Cout, dtype=acc) for _ in range(T)]
    if direct:
        from ..backend import cpu
    dx = xp.zeros_like(x) if need_dx else None

    def grad_chunk(chunk, worker, dxn, r0):
        """One chunk's dw, db (into the worker's sums) and dx (into dxn, whose row 0 is the
        image's input row r0)."""
        n, y0, y1 = chunk
        dchunk = dout[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L), L=(y1-y0)*Wo
        if direct:  # dw, db from the rows in place, the ReLU mask read there: no columns
            cpu.direct_dw_rows(x[n], dout[n], dout[n] if out is None else out[n],
                               out is not None, y0, y1, k, dw_parts[worker].reshape(w.shape),
                               db_parts[worker])
            if not need_dx:
                return
        if out is not None:  # the fused ReLU: the gradient passes where the output is > 0
            o_chunk = out[n].reshape(Cout, Ho * Wo)[:, y0 * Wo : y1 * Wo]  # (Cout, L)
            mbuf = backend.workspace(xp, x.dtype, Cout * (y1 - y0) * Wo,
                                     slot=backend.Slot("relu_mask", worker))
            dchunk = backend.relu_backward(dchunk, o_chunk, mbuf.reshape(Cout, (y1 - y0) * Wo))
        if not direct:
            db_parts[worker] += dchunk.sum(axis=1)
            cols = _columns(x[n], k, y0, y1, worker)  # (Cin*k*k, L)
            dw_parts[worker] += (cols @ dchunk.T).T  # (Cout, Cin*k*k); this operand order
            # is the fast one for BLAS when L is long and Cout, Cin*k*k are short
        if not need_dx:
            return
        if k == 1:  # col2im of a 1x1 conv is the identity
            dxn.reshape(Cin, -1)[:, (y0 - r0) * W : (y1 - r0) * W] += w2.T @ dchunk
            return
        dbuf = backend.workspace(xp, x.dtype, Cin * k * k * (y1 - y0) * Wo,
                                 slot=backend.Slot("dcols", worker))
        dcols = xp.matmul(w2.T, dchunk, out=dbuf.reshape(Cin * k * k, (y1 - y0) * Wo))
        backend.col2im(dcols, k, y0 - r0, y1 - r0, dxn)

    chunks = _row_chunks(N, Ho, k, xp, Cin * k * k * Wo * x.itemsize)
    blocks = _blocks(chunks, T)
    halos = [None] * T  # worker w > 0: (n, y0, its first chunk's dx rows), added after

    def grad_block(block, worker):
        for i, (n, y0, y1) in enumerate(block):
            if i == 0 and worker > 0 and need_dx and k > 1:  # rows the worker before also adds to
                halo = xp.zeros((Cin, y1 - y0 + k - 1, W), dtype=x.dtype)
                grad_chunk((n, y0, y1), worker, halo, y0)
                halos[worker] = (n, y0, halo)
            else:
                grad_chunk((n, y0, y1), worker, dx[n] if need_dx else None, 0)

    backend.parallel_for(xp, blocks, grad_block)
    for h in halos[1:]:  # in worker order: deterministic
        if h is not None:
            n, y0, halo = h
            dx[n, :, y0 : y0 + halo.shape[1]] += halo
    dw2, db = dw_parts[0], db_parts[0]
    for dwp, dbp in zip(dw_parts[1:], db_parts[1:], strict=True):  # in worker order: deterministic
        dw2 += dwp
        db += dbp
    if direct:
        dw2, db = dw2.astype(x.dtype), db.astype(x.dtype)
    return dx, dw2.reshape(w.shape), db


def _gather_backward(dout, x, w, out, need_dx, plan):
    """conv2d_backward where dw runs the rows loops (the CPU, 3x3; see `_plan`).

    dout (N, Cout, Ho, Wo) contiguous, x (N, Cin, H, W), w (Cout, Cin, 3, 3), out the
    output when a ReLU was fused (its mask), else None. Returns (dx or None, dw, db).

    Each chunk of output rows y0..y1-1 writes the gradient after the ReLU mask once, in
    the two layouts its loops read (backend/cpu_rows.py grad_rows), then
    - dw, db: nine dot products per channel pair over the chunk's rows (plan.dw "rows"),
      or nine GEMMs with shifted views of x ("shifted", `_shifted_dw`), summed per worker
      in float64 (in x's dtype past 4 MB of sums: the GEMM path's order of rounding);
    - dx rows y0..y1-1 (and the image's last 2 rows with its last chunk): the valid conv
      of the gradient zero-padded by 2 with the flipped, transposed weights, by the rows
      loops or by Winograd (plan.dx). A dx row is the sum of one chunk's products only:
      nothing is added across chunks, so no halo rows, and dx needs no zeroing.
    dw, db are summed per worker and added in worker order: the same numbers run to run.
    """
    from ..backend import cpu_rows, cpu_winograd

    N, Cin, H, W = x.shape
    Cout, Ho, Wo = dout.shape[1:]
    T, Slot, itemsize = backend.workers(np), backend.Slot, x.itemsize
    budget = backend.chunk_bytes(np)
    # dw, db summed per worker in float64 where that is small (up to 128 x 256 channels), else
    # in x's dtype as the GEMM's path does: at 1024 x 1024 channels the float64 sums were
    # 2 x 75 MB at the bottleneck, the step's peak (572/64: 1458 MB, against 1391 for the GEMM)
    acc = np.float64 if Cout * Cin * 9 * 8 <= budget else x.dtype
    dw_shape = (3, 3, Cout, Cin) if plan.dw == "shifted" else (Cout, Cin, 3, 3)
    dw_parts = [np.zeros(dw_shape, dtype=acc) for _ in range(T)]  # per worker
    db_parts = [np.zeros(Cout, dtype=acc) for _ in range(T)]
    zero = np.zeros(Cin, dtype=x.dtype)
    wino_dx = need_dx and plan.dx == "winograd"
    wf = None  # (Cin, Cout, 3, 3): dx[c, Y, X] = sum_{o,i,j} wf[c, o, i, j] * gpad[o, Y+i, X+j];
    # Winograd's dx needs it only for an odd last row (an odd height)
    if need_dx and (not wino_dx or H % 2):
        wf = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dtype=x.dtype)
    Uf = (cpu_winograd.winograd_filter(w, _filters((16, Cin, Cout), x.dtype, "wino_u"), flip=True)
          if wino_dx else None)  # wf's, from w
    dx = np.empty_like(x) if need_dx else None
    # The chunks: the padded and the flat gradient's rows together fit chunk_bytes, not the
    # columns' (there are none): dw's loops add into the (Cout, Cin, 3, 3) sums once per
    # chunk, 38-75 MB read and written at 1024 channels (572/64, bottleneck, dw: 496 ->
    # 251 ms). Winograd's dx runs in even runs of `sub` rows whose V (16, Cout, tiles) and
    # M (16, Cin, tiles) together fit `_wino_room`, in the slot of the flat gradient, which
    # dw's loops are done with by then.
    chunks = _row_chunks(N, Ho, 3, np, Cout * (2 * Wo + 6) * itemsize, _MULTIPLE[plan.dx])
    room = _wino_room(Uf) if wino_dx else budget
    sub = room // _wino_row_bytes(Cin, Cout, W, itemsize)  # dx rows are W wide
    sub = max(2, sub - sub % 2)

    def grad_chunk(chunk, worker):
        n, y0, y1 = chunk
        Y1 = H if y1 == Ho else y1  # dx rows y0..Y1-1: the last chunk also the last 2
        r0, r1 = (y0 - 2, Y1) if need_dx else (y0, y0)  # the padded gradient's rows
        gp = backend.workspace(np, x.dtype, Cout * (r1 - r0) * (Wo + 4), slot=Slot("cols", worker))
        gf = backend.workspace(np, x.dtype, Cout * (y1 - y0) * W, slot=Slot("dcols", worker))
        gp = gp.reshape(Cout, r1 - r0, Wo + 4)  # in the slots of the GEMM's columns and their
        gf = gf.reshape(Cout, (y1 - y0) * W)  # gradient; dw's loops are done with gf before
        # Winograd's dx writes its V and M there
        cpu_rows.grad_rows(dout[n], dout[n] if out is None else out[n], out is not None,
                           r0, r1, y0, y1, gp, gf)
        if plan.dw == "shifted":
            _shifted_dw(x[n].reshape(Cin, H * W), W, gf, y0, y1 - y0, dw_parts[worker],
                        db_parts[worker])
        else:
            cpu_rows.conv3_dw_rows(x[n].reshape(Cin, H * W), W, gf, y0, y1 - y0,
                                   dw_parts[worker], db_parts[worker])
        if not need_dx:
            return
        if wino_dx:  # in runs of `sub` rows (or the chunk's, if fewer)
            nt = min(sub, Y1 - y0 + 1) // 2 * (W // 2)  # tiles in a run
            nv = 16 * Cout * nt  # V's room, then M's
            vm = _wino_space(16 * (Cout + Cin) * nt, x.dtype, Slot("dcols", worker))
            for s in range(0, Y1 - y0, sub):
                _winograd_rows(gp, s, min(sub, Y1 - y0 - s), Uf, wf, zero, False, dx[n], y0 + s,
                               vm[:nv], vm[nv:])
        else:
            cpu_rows.conv3_rows(gp, 0, wf, zero, False, dx[n], y0, Y1 - y0)

    backend.parallel_for(np, _blocks(chunks, T), _each(grad_chunk))
    dw, db = dw_parts[0], db_parts[0]
    for dwp, dbp in zip(dw_parts[1:], db_parts[1:], strict=True):  # in worker order
        dw += dwp
        db += dbp
    if plan.dw == "shifted":  # (3, 3, Cout, Cin) -> (Cout, Cin, 3, 3), into the second
        # worker's sums, which are added in and free by now (no third array of dw's size)
        into = (dw_parts[1].reshape(Cout, Cin, 3, 3) if T > 1
                else np.empty((Cout, Cin, 3, 3), dtype=dw.dtype))
        np.copyto(into, dw.transpose(2, 3, 0, 1))
        dw = into
    return dx, dw.astype(x.dtype, copy=False), db.astype(x.dtype, copy=False)


def _shifted_dw(xf, W, gf, y0, R, dw, db):
    """dw, db of a valid 3x3 conv from R output rows y0.. of one image, by nine GEMMs.

    xf (Cin, H*W) the image's flat planes, gf (Cout, R*W) grad_rows' flat gradient rows
    (each row's W-2 values, then two zeros), as for cpu_rows.conv3_dw_rows; dw (3, 3, Cout,
    Cin) and db (Cout,), float64 or x's dtype, added to:
    dw[i, j, o, c] += sum_{q<R, xx<W-2} g[o, y0+q, xx] * x[c, y0+q+i, xx+j].

    The chunk's rows are one run of P = R*W - 2 values (x's columns W-2, W-1 meet the
    gradient's padding zeros), so the sum for (i, j) is gf[:, :P] @ xf[:, s:s+P].T with s =
    (y0+i)*W + j: x's planes read in place, a (Cin, P) view whose rows lie H*W apart, which
    BLAS takes as its leading dimension. Each product goes to a (Cout, Cin) array of the
    call's (from the heap, backend/heap.py: a workspace would stay in the step's peak),
    then into dw: a fixed order, the same numbers run to run.
    """
    Cin, Cout = xf.shape[0], gf.shape[0]
    P = R * W - 2
    g = gf[:, :P]
    db += g.sum(axis=1, dtype=db.dtype)
    tmp = np.empty((Cout, Cin), dtype=xf.dtype)
    for i in range(3):
        for j in range(3):
            s = (y0 + i) * W + j
            np.matmul(g, xf[:, s : s + P].T, out=tmp)  # (Cout, P) @ (P, Cin)
            dw[i, j] += tmp
