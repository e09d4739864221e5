# %% [markdown]
# # 08. Inside the GPU path
#
# Tutorial 01 wrote a convolution as im2col, one matrix product and col2im, on whole arrays
# (`minunet/ops/conv.py`, the lesson). On a GPU minunet runs the same three steps with its own
# CUDA kernels (`kernels/im2col.cu`), on row chunks of the layer, launched from
# `minunet/backend/gpu.py`. This tutorial reads those kernels:
#
# 1. the contract: one signature and one memory layout, with a CPU twin (Numba / NumPy) and a GPU
#    twin (CUDA) behind it;
# 2. the im2col kernel, line by line, and its launch geometry for the paper's layers;
# 3. col2im, the adjoint: why it is written as a **gather** (each thread owns an input pixel)
#    rather than a **scatter** (each thread adds its column entry into a pixel, with atomics),
#    and what that buys: no atomics, and the same bits on every run;
# 4. timings: the CPU twins against the plain NumPy ops and against the matrix product, and, on
#    a machine with a GPU, the kernels against NumPy and the GPU's own matrix product.
#
# Everything except the GPU timings runs on a CPU: the kernels are read as text, and what they
# compute is checked through their CPU twins, which follow the same index arithmetic.
#
# **Know first:** tutorial 01 (im2col, col2im and the `+=`); what a CUDA thread, block and grid are
# (one paragraph of any CUDA introduction).
# **Takes:** about 10 s to run in full, 3 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU without
# a GPU; 30 minutes to read.

# %%
import re
import time

import matplotlib.pyplot as plt
import numpy as np

import minunet.backend.cpu
import minunet.backend.gpu
import minunet.backend.twins
from minunet import backend, ops
from minunet.bench import Timer, median
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_reorder_fraction,
    check_scatter_speed,
    check_source_offset,
    report,
)

T = setup("08_gpu_path")
t_start = time.perf_counter()
rng = np.random.default_rng(T.seed)
timer = Timer(np)  # wall clock on the CPU (CUDA events on the GPU, below)
REPEAT = T.pick(7, 3)

# %% [markdown]
# ## 1. One signature, two twins
#
# The fast conv (`minunet/fast/conv.py`) never calls NumPy or CuPy for its copies directly. It
# calls a *dispatcher* in `minunet/backend/twins.py`, which picks the CPU twin for a NumPy array
# and the GPU twin for a CuPy array. Both twins take one image `x` (C, H, W) and a range of
# output rows `y0 .. y1-1` (a chunk), and fill the same column layout:
#
# $$
# \text{out}\big[(c\,k + i)\,k + j,\;\; (y - y_0)\,W_o + x'\big] = x[c,\; y + i,\; x' + j],
# \qquad W_o = W - k + 1,
# $$
#
# with $0 \le i, j < k$ the tap of the kernel and $(y, x')$ the output pixel: row $r = (ck+i)k+j$
# of the column matrix holds tap $(i, j)$ of channel $c$ for every output pixel of the chunk,
# which is the plain op's layout with the batch axis removed.

# %%
print(T.getsource(minunet.backend.twins.im2col))
print(T.getsource(minunet.backend.cpu.im2col))

# %% [markdown]
# The CPU twin is $k^2$ NumPy slice copies (one per tap), each moving whole rows. The GPU twin is a
# CUDA kernel. A check of the contract before anything else: the twin, called on one image for
# all its output rows, gives the plain op's column matrix **bit for bit** (difference 0), and so
# does a call per chunk of rows, stacked.

# %%
C, H = 8, 21
x = rng.standard_normal((1, C, H, H)).astype(np.float32)
k = 3
Ho = Wo = H - k + 1
plain_cols = ops.im2col(x, k)  # (C*k*k, Ho*Wo)
twin_cols = backend.im2col(x[0], k, 0, Ho, np.empty_like(plain_cols))
chunks = [(0, 7), (7, 8), (8, Ho)]  # any cut into row ranges
pieces = [backend.im2col(x[0], k, y0, y1, np.empty((C * k * k, (y1 - y0) * Wo), np.float32))
          for y0, y1 in chunks]
stacked = np.concatenate(pieces, axis=1)
print(f"column matrix {plain_cols.shape}: twin vs plain max diff "
      f"{np.abs(twin_cols - plain_cols).max()}, chunks {chunks} stacked vs plain "
      f"{np.abs(stacked - plain_cols).max()}")
assert np.array_equal(twin_cols, plain_cols) and np.array_equal(stacked, plain_cols)

# %% [markdown]
# ## 2. The im2col kernel, line by line
#
# `minunet.backend.gpu.kernel_dir()` finds the `.cu` files (it needs no CuPy). Every kernel
# file opens with a header: what it computes, its launch geometry, and pointers to its
# launcher, its CPU twin, the plain op it speeds up and its tests:

# %%
cu_path = minunet.backend.gpu.kernel_dir() / "im2col.cu"
cu = cu_path.read_text()
header = cu[: cu.index("template")]
print(header)


def kernel_text(name):
    """The source of one __global__ function in im2col.cu, up to its closing brace."""
    start = cu.index(f"__global__ void {name}(")
    start = cu.rindex("template", 0, start)
    end = cu.index("\n}\n", start) + 2
    return cu[start:end]


def walk(name, notes):
    """Print a kernel line by line; after a line containing a key of `notes`, its note.
    Every note must match a line, so a changed kernel makes this cell fail, not mislead."""
    used = set()
    for line in kernel_text(name).splitlines():
        print(line)
        for key, note in notes.items():
            if key in line and key not in used:
                used.add(key)
                for part in note.split("\n"):
                    print(f"      >>> {part}")
    missing = set(notes) - used
    assert not missing, f"the kernel changed: no line contains {missing}"

# %%
walk("im2col", {
    "template <typename T>": "one source for float and double: NVRTC compiles im2col<float>\n"
                             "and im2col<double> (RawModule name_expressions)",
    "const T* __restrict__ x": "__restrict__: x and out never overlap, so the compiler may\n"
                               "keep loads in registers and use the read-only cache",
    "const long long L": "L = columns of out = (rows of the chunk) x Wo; 64-bit because\n"
                         "C*k*k*L can exceed 2^31 even when L itself does not",
    "const int R = C * k * k": "R = rows of out, one per (channel, tap)",
    "for (int r = blockIdx.y; r < R; r += gridDim.y)": "grid.y walks the rows of out: every block\n"
                                                       "of this grid row copies ONE tap of ONE "
                                                       "channel (a grid-stride loop, in case\n"
                                                       "R exceeded the grid)",
    "const int c = r / (k * k);": "undo r = (c*k + i)*k + j: the channel ...",
    "const int i = (r / k) % k;": "... the tap row ...",
    "const int j = r % k;": "... and the tap column",
    "const T* src": "&x[c, y0+i, j]: where this tap's window starts",
    "T* dst": "&out[r, 0]: the row of out this block writes",
    "for (long long q": "grid.x and the 256 threads of a block walk the L columns; thread q\n"
                        "handles column q, then q + (all threads of the grid row), ...",
    "const int y = (int)q / Wo;": "column q is output pixel (y, xx) of the chunk",
    "dst[q] = src[y * W + xx];": "the copy. Neighbouring threads have neighbouring q, so they\n"
                                 "write neighbouring dst[q] and read neighbouring src[...] on\n"
                                 "one image row: coalesced in both directions",
})

# %% [markdown]
# Two design points stand out. First, the thread index runs along the *output column* $q$, the
# contiguous axis of both `out` and (within one image row) `x`; a warp of 32 threads therefore
# reads and writes 32 consecutive values, a single memory transaction each way. Second, there is
# no arithmetic at all: im2col is a pure copy, so its speed is set by memory bandwidth, and the
# interesting number is bytes per second, not FLOP/s.
#
# ### Launch geometry
#
# The launcher sets the grid: `grid.x` covers the $L$ columns in blocks of 256 threads (capped,
# the grid-stride loop does the rest), `grid.y` covers the $C k^2$ rows. Here is the launcher,
# and the geometry for the 3x3 layers of the paper's network on a 572 x 572 tile:

# %%
print(T.getsource(minunet.backend.gpu.im2col))

# %% [markdown]
# On the GPU the fast conv cuts a layer into chunks of output rows whose column matrix fits in
# `backend.WORKSPACE_BYTES` (one chunk after another on the stream; `minunet/fast/conv.py`).
# The table recomputes, for each 3x3 layer of the paper's network (float32, 572 x 572), the rows
# per chunk, the column matrix of one chunk, and the grid of one launch. The number of threads
# per block is read from the kernel header printed above; 65535 is CUDA's limit on `grid.y`.

# %%
BLOCK = int(re.search(r"blocks of (\d+) threads", header).group(1))
MAX_GRID = 65535  # CUDA: the largest gridDim.y (and the cap minunet puts on gridDim.x)
print(f"threads per block (from the header): {BLOCK}; workspace "
      f"{backend.WORKSPACE_BYTES / 2**20:.0f} MiB")
print(f"{'layer':18s} {'C_in':>5s} {'H_in':>5s} {'rows/chunk':>10s} {'chunks':>6s} "
      f"{'cols MB':>8s} {'grid (x, y)':>14s} {'blocks':>7s} {'threads':>11s}")
layers = []
size, c_in = 572, 1
for level in range(5):  # the contracting path and the bottleneck: two 3x3 convs each
    c = 64 * 2**level
    for conv in range(2):
        layers.append((f"level {level} conv{conv}", c_in if conv == 0 else c, size - 2 * conv))
    size, c_in = (size - 4) // 2, c
for name, cin, h in layers:
    wo = h - 2
    row_bytes = cin * 9 * wo * 4  # float32 columns of one output row
    rows = max(2, min(backend.WORKSPACE_BYTES // row_bytes, wo))
    L = rows * wo
    grid = (min(-(-L // BLOCK), MAX_GRID), min(cin * 9, MAX_GRID))
    print(f"{name:18s} {cin:5d} {h:5d} {rows:10d} {-(-wo // rows):6d} "
          f"{cin * 9 * L * 4 / 1e6:8.1f} {str(grid):>14s} {grid[0] * grid[1]:7,d} "
          f"{grid[0] * grid[1] * BLOCK:11,d}")
whole = 64 * 9 * 568 * 568 * 4
print(f"the whole column matrix of level 0 conv1 (64 x 9 rows, 568 x 568 columns): "
      f"{whole / 1e6:.0f} MB = {whole / backend.WORKSPACE_BYTES:.1f} workspaces")

# %% [markdown]
# Each launch starts thousands of blocks, enough to fill every multiprocessor of a large GPU
# many times over, so a single chunk keeps the device busy, and the 64 MiB workspace bounds the
# memory: the whole column matrix of the second layer, printed under the table, would be many
# times larger. (For the decoder's 3x3 layers the
# numbers are similar: the same channel counts on similar sizes.)
#
# ## 3. col2im: scatter or gather
#
# im2col copies each input pixel into up to $k^2$ places (one per tap whose window covers it).
# Its adjoint, col2im, which the backward pass needs (tutorial 01), therefore **adds** up to
# $k^2$ column entries into each input pixel:
#
# $$
# dx[c, Y, X] \mathrel{+}= \sum_{\substack{0 \le i, j < k\\ 0 \le Y - y_0 - i < y_1 - y_0\\
# 0 \le X - j < W_o}} \text{cols}\big[(c k + i) k + j,\;\; (Y - y_0 - i) W_o + (X - j)\big].
# $$
#
# There are two ways to map this onto threads:
#
# * **scatter**: one thread per column entry, each adding its value into its pixel. Up to
#   $k^2 = 9$ threads add into the same pixel at the same time, so every addition must be an
#   `atomicAdd`, and the order in which the nine arrive changes from run to run. Floating-point
#   addition is not associative, so the result changes in its last bits from run to run.
# * **gather**: one thread per input pixel, reading its (up to nine) entries and adding them in a
#   fixed $(i, j)$ order. No two threads write the same place: no atomics, and the same bits on
#   every run. This is the formula above read from left to right, and it is what
#   `kernels/im2col.cu` does:

# %%
walk("col2im", {
    "const long long P": "P = pixels of the band of dx this chunk touches: rows y0 .. y1+k-2",
    "for (int c = blockIdx.y; c < C; c += gridDim.y)": "grid.y walks the channels",
    "for (long long p": "grid.x and the threads walk the band's pixels: ONE thread per dx pixel",
    "T acc = dx_c[p];": "start from what dx already holds (col2im adds: the chunk above added\n"
                        "into the same rows)",
    "const int y = Y - i;": "invert the copy: output row y read input row y + i through tap\n"
                            "row i, so the pixel's entry for tap row i sits in column row Y - i",
    "if (y < 0 || y >= rows) continue;": "no such row in this chunk: this tap never read the pixel",
    "acc += col_c[": "the gather: read the entry that was copied from this pixel, in (i, j) order",
    "dx_c[p] = acc;": "one write per pixel, by its own thread: no atomics, no races",
})

# %% [markdown]
# The CPU twin is a Numba loop with the same order of additions; the plain op adds the nine taps
# as nine whole-array slices `+=`, which is the same order per pixel, too. So the three agree bit
# for bit. The check compares the twin with the plain op and asserts a difference of exactly
# **0**.

# %%
print(T.getsource(minunet.backend.cpu.col2im))
dcols = rng.standard_normal(plain_cols.shape).astype(np.float32)  # (C*k*k, Ho*Wo)
dx_plain = ops.col2im(dcols, x.shape, k)[0]  # (C, H, W)
dx_twin = backend.col2im(dcols, k, 0, Ho, np.zeros((C, H, H), np.float32))
print(f"col2im twin vs plain: max diff {np.abs(dx_twin - dx_plain).max()}")
assert np.array_equal(dx_twin, dx_plain)

# %% [markdown]
# What one gather thread reads, drawn on a small example: a 6 x 6 image, $k = 3$, one chunk of
# all 4 output rows. Left: the input, with the pixel of one thread and, overlaid, the windows of
# the output pixels that read it. Right: the column matrix, each entry labelled with the input
# pixel it was copied from; the thread of that pixel reads exactly the highlighted entries, one
# in each row $(i, j)$ that has one, and writes only its own pixel. The check: the highlighted
# entries are exactly the entries labelled with that pixel (nine for this interior pixel, one
# per tap).

# %%
Hd, kd = 6, 3
Wod = Hd - kd + 1
ids = np.arange(Hd * Hd, dtype=np.float64).reshape(1, Hd, Hd)  # each pixel holds its index
labels_cols = backend.im2col(ids, kd, 0, Wod, np.empty((kd * kd, Wod * Wod)))  # (9, 16)
Yp, Xp = 2, 3  # the pixel of one gather thread
reads = np.zeros(labels_cols.shape, bool)
for i in range(kd):  # the kernel's loops, for this one pixel
    for j in range(kd):
        y, xx = Yp - i, Xp - j
        if 0 <= y < Wod and 0 <= xx < Wod:
            reads[i * kd + j, y * Wod + xx] = True
print(f"pixel ({Yp}, {Xp}) = index {Yp * Hd + Xp}: the thread reads {int(reads.sum())} entries")
assert (reads == (labels_cols == Yp * Hd + Xp)).all()

fig, ax = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 2.4]})
img = np.zeros((Hd, Hd))
for i in range(kd):
    for j in range(kd):
        y, xx = Yp - i, Xp - j
        if 0 <= y < Wod and 0 <= xx < Wod:
            img[y : y + kd, xx : xx + kd] += 1  # the windows that covered the pixel
ax[0].imshow(img, cmap="Blues", vmin=0, vmax=kd * kd)
ax[0].add_patch(plt.Rectangle((Xp - 0.5, Yp - 0.5), 1, 1, fill=False, ec="red", lw=2))
for y in range(Hd):
    for xx in range(Hd):
        ax[0].text(xx, y, f"{y * Hd + xx}", ha="center", va="center", fontsize=7)
ax[0].set_title(f"input pixel {Yp * Hd + Xp} (red);\nblue: the windows that read it, overlaid",
                fontsize=9)
ax[1].imshow(reads, cmap="Reds", vmin=0, vmax=1.5, aspect="auto")
for r in range(kd * kd):
    for q in range(Wod * Wod):
        ax[1].text(q, r, f"{int(labels_cols[r, q])}", ha="center", va="center", fontsize=6)
ax[1].set_yticks(range(kd * kd), [f"(i,j)=({r // kd},{r % kd})" for r in range(kd * kd)],
                 fontsize=7)
ax[1].set_xticks(range(0, Wod * Wod, Wod), [f"y={y}" for y in range(Wod)], fontsize=7)
ax[1].set_title("column matrix: the input pixel of each entry; red: what the thread of "
                f"pixel {Yp * Hd + Xp} reads", fontsize=9)
ax[0].set_xticks([])
ax[0].set_yticks([])
fig.tight_layout()
T.figure(fig, "gather")
plt.show()

# %% [markdown]
# ### What the atomics of a scatter would do to the bits
#
# We cannot run GPU atomics on a CPU, but we can reproduce their effect: add each pixel's
# contributions in a **random** order, as threads arriving at an `atomicAdd` would, and compare
# with the fixed order of the gather. Each of the two results is a correct sum; they differ in
# the last bits of many pixels. The check asserts: the fixed order reproduces the twin exactly
# (0 pixels differ); random orders differ from it in **some** pixels (more than 0), by no more
# than float32 rounding allows (relative **1e-5**).

# %%
c6 = dcols.reshape(C, k, k, Ho, Wo)  # (C, i, j, Ho, Wo)
contrib = np.zeros((k * k, C, H, H), np.float32)  # what each tap adds to each pixel (0 if none)
for i in range(k):
    for j in range(k):
        contrib[i * k + j, :, i : i + Ho, j : j + Wo] = c6[:, i, j]


def ordered_sum(order):
    """Add the k*k contributions of every pixel in `order` (k*k, C, H, W), in float32."""
    acc = np.zeros((C, H, H), np.float32)
    for t in range(k * k):
        acc += np.take_along_axis(contrib, order[t : t + 1], axis=0)[0]
    return acc


fixed = ordered_sum(np.broadcast_to(np.arange(k * k)[:, None, None, None], contrib.shape))
runs = [ordered_sum(np.argsort(rng.random(contrib.shape), axis=0)) for _ in range(3)]
n_diff = [int((r != fixed).sum()) for r in runs]
worst = max(float(np.abs(r - fixed).max() / np.abs(fixed).max()) for r in runs)
print(f"fixed order vs twin: {int((fixed != dx_twin).sum())} pixels differ")
print(f"three 'atomic' runs in random order: {n_diff} of {fixed.size} pixels differ from the "
      f"fixed order; largest difference {worst:.1e} of the largest |dx|")
assert np.array_equal(fixed, dx_twin) and min(n_diff) > 0 and worst < 1e-5

# %% [markdown]
# A difference in the last bits looks harmless, but it makes a training run unrepeatable (the
# differences grow over thousands of steps) and it makes a test that compares two runs flaky.
# The gather gives up nothing for it: its reads are as coalesced as im2col's (neighbouring
# threads, neighbouring pixels, neighbouring entries of one row of `cols`), and each pixel is
# written once instead of nine times.
#
# ## 4. Timings on this machine's CPU
#
# Now the CPU side, timed (median of several runs after a warm-up, `minunet.bench.Timer`). One
# layer, whole: the plain ops (`minunet/ops/conv.py`: nine slice copies; nine slice `+=`)
# against the CPU twins (the same copies; a Numba gather), and the matrix product of the layer,
# which is what im2col feeds. Bytes are counted as in `python -m minunet.bench`: a copy reads and
# writes each column entry; col2im reads each entry and reads and writes a pixel of `dx` per
# entry in the slice form. Timings depend on the machine and on what else runs on it.

# %%
C_L, H_L = T.pick((64, 132), (32, 68))  # 64 channels: a level-0 layer of a small tile
xl = rng.standard_normal((1, C_L, H_L, H_L)).astype(np.float32)
Hl_o = H_L - 2
cols_l = ops.im2col(xl, 3)  # (C*9, Ho*Wo)
dcols_l = rng.standard_normal(cols_l.shape).astype(np.float32)
w2 = rng.standard_normal((C_L, C_L * 9)).astype(np.float32)  # (Cout, Cin*9)
buf = np.empty_like(cols_l)
item = 4
copy_bytes = 2 * cols_l.size * item
col2im_bytes = cols_l.size * item + 2 * cols_l.size * item
gemm_flop = 2 * C_L * C_L * 9 * Hl_o * Hl_o
rows = [
    ("im2col, plain op", lambda: ops.im2col(xl, 3), copy_bytes, 0),
    ("im2col, CPU twin", lambda: backend.im2col(xl[0], 3, 0, Hl_o, buf), copy_bytes, 0),
    ("col2im, plain op", lambda: ops.col2im(dcols_l, xl.shape, 3), col2im_bytes, 0),
    ("col2im, CPU twin (gather)",
     lambda: backend.col2im(dcols_l, 3, 0, Hl_o, np.zeros((C_L, H_L, H_L), np.float32)),
     col2im_bytes, 0),
    ("GEMM W2 @ cols (BLAS)", lambda: w2 @ cols_l, 0, gemm_flop),
]
print(f"layer: {C_L} -> {C_L} channels, {H_L} x {H_L} input, float32; column matrix "
      f"{cols_l.nbytes / 1e6:.1f} MB")
cpu_times = {}
for name, fn, nbytes, flop in rows:
    s = median(timer(fn, REPEAT, 1))
    cpu_times[name] = s
    rate = f"{nbytes / s / 1e9:6.1f} GB/s" if nbytes else f"{flop / s / 1e9:6.1f} GFLOP/s"
    print(f"  {name:28s} {s * 1e3:8.2f} ms   {rate}")
speedup = cpu_times["col2im, plain op"] / cpu_times["col2im, CPU twin (gather)"]
share = cpu_times["im2col, CPU twin"] / cpu_times["GEMM W2 @ cols (BLAS)"]
print(f"col2im: the gather twin runs {speedup:.1f}x as fast as the plain op's nine slice += "
      f"(the plain op's time divided by the twin's); im2col takes {share:.0%} of the GEMM's "
      f"time")

# %% [markdown]
# On the CPUs this was written on, the gather twin is several times faster than the nine slice
# `+=` (it adds all nine contributions while one row of `dx` sits in the L1 cache, instead of
# streaming `dx` through memory nine times), and im2col, a plain copy, costs a fraction of the
# matrix product it feeds. The plain im2col can also lose to the twin's identical copies for a
# reason that has nothing to do with the copy: it allocates a new column matrix on every call
# (fresh memory, page faults), while the twin writes into a workspace that is reused. The
# printed numbers above are this run's.
#
# ## 5. On a GPU
#
# With a GPU (CuPy installed and a device visible), the next cell compiles the kernels, checks
# them against the CPU twins, and times, with CUDA events, one chunk of the paper's second
# layer (64 channels, 570 x 570 input): the im2col and col2im kernels and the GEMM that
# consumes the columns (cuBLAS through CuPy), next to the same work on this CPU (the twins and
# NumPy's BLAS). Without a GPU it says why it is skipped.

# %%
if T.gpu:
    gpu = minunet.backend.gpu
    gpu.compile_all()  # NVRTC compiles each .cu once per process: keep it out of the timings
    c_g, h_g = 64, 570
    wo_g = h_g - 2
    rows_g = T.pick(backend.WORKSPACE_BYTES // (c_g * 9 * wo_g * 4), 8)
    x_h = rng.standard_normal((c_g, h_g, h_g)).astype(np.float32)
    w_h = rng.standard_normal((c_g, c_g * 9)).astype(np.float32)
    cols_h = np.empty((c_g * 9, rows_g * wo_g), np.float32)
    x_d, w_d = backend.to_device(x_h), backend.to_device(w_h)
    xp = backend.xp_of(x_d)  # CuPy, reached through the backend
    cols_d = xp.empty(cols_h.shape, xp.float32)
    # correctness first: the kernels against the CPU twins, exactly
    backend.im2col(x_h, 3, 0, rows_g, cols_h)
    backend.im2col(x_d, 3, 0, rows_g, cols_d)
    d_im2col = float(np.abs(backend.to_host(cols_d) - cols_h).max())
    dx_h = backend.col2im(cols_h, 3, 0, rows_g, np.zeros_like(x_h))
    dx_d = backend.col2im(cols_d, 3, 0, rows_g, xp.zeros_like(x_d))
    d_col2im = float(np.abs(backend.to_host(dx_d) - dx_h).max())
    print(f"GPU vs CPU twin: im2col max diff {d_im2col}, col2im max diff {d_col2im}")
    assert d_im2col == 0 and d_col2im == 0
    gtimer = Timer(xp)
    L_g = rows_g * wo_g
    work = [
        ("im2col", lambda: backend.im2col(x_d, 3, 0, rows_g, cols_d),
         lambda: backend.im2col(x_h, 3, 0, rows_g, cols_h), 2 * cols_h.nbytes, 0),
        ("col2im", lambda: backend.col2im(cols_d, 3, 0, rows_g, dx_d),
         lambda: backend.col2im(cols_h, 3, 0, rows_g, dx_h), 3 * cols_h.nbytes, 0),
        ("GEMM", lambda: w_d @ cols_d, lambda: w_h @ cols_h, 0, 2 * c_g * c_g * 9 * L_g),
    ]
    print(f"one chunk: {rows_g} output rows, columns {cols_h.nbytes / 1e6:.0f} MB")
    for name, on_gpu, on_cpu, nbytes, flop in work:
        tg = median(gtimer(on_gpu, REPEAT * 3, 3))
        tc = median(timer(on_cpu, REPEAT, 1))
        unit, amount = ("GB/s", nbytes) if nbytes else ("GFLOP/s", flop)
        print(f"  {name:7s} GPU {tg * 1e3:8.3f} ms ({amount / tg / 1e9:8.1f} {unit})   "
              f"CPU {tc * 1e3:8.2f} ms ({amount / tc / 1e9:6.1f} {unit})   {tc / tg:6.1f}x")
else:
    print(f"skipped: no GPU here ({backend.gpu_status().reason}).")
    print("The kernels were read above and their CPU twins checked; the GPU timings need CuPy "
          "and a CUDA device.")

# %% [markdown]
# ### Without a GPU: the kernel's own source, run on the CPU
#
# A GPU is needed to run a kernel *fast*, not to run it. `minunet/backend/emulate.py` compiles
# `kernels/im2col.cu` as plain C++ (g++) after a small header, `kernels/cuda_emu.h`, that supplies
# what CUDA would: `threadIdx`, `blockIdx`, `blockDim` and `gridDim` set for each emulated thread,
# `__shared__` memory per block and `__syncthreads()` as a real barrier. Every block of the grid
# and every thread of a block then runs the kernel's source, one after another, with the
# geometry the launcher itself computes (`gpu.im2col_geometry`, `gpu.col2im_geometry`). The cell
# runs im2col and col2im on a chunk, threads in reverse order, and compares them with the CPU
# twins. The test suite checks every kernel this way, under AddressSanitizer, in three thread
# orders and with small grids (`tests/emulation/`). Without a C++ compiler the cell says so.

# %%
import minunet.backend.emulate

emulate = minunet.backend.emulate
if emulate.compiler() is None:
    print("skipped: no C++ compiler (g++, or set CXX) to run the kernels on the CPU with")
else:
    prog = emulate.Program("im2col.cu")  # g++ once (a few seconds), then cached
    CE, HE, WE, KE, Y0E, Y1E = 3, 12, 10, 3, 2, 7  # a chunk of 5 output rows of an odd image
    xe = rng.standard_normal((CE, HE, WE)).astype(np.float32)
    sizes = tuple(np.int32(v) for v in (CE, HE, WE, KE, Y0E, Y1E))  # the kernels' int arguments
    cols_e = np.full((CE * KE * KE, (Y1E - Y0E) * (WE - KE + 1)), np.nan, np.float32)
    grid_e, block_e = minunet.backend.gpu.im2col_geometry(CE, HE, WE, KE, Y0E, Y1E)
    prog.launch("im2col<float>", grid_e, block_e, (xe, cols_e, *sizes), order="reverse")
    dx_e = np.zeros_like(xe)
    grid_c, block_c = minunet.backend.gpu.col2im_geometry(CE, HE, WE, KE, Y0E, Y1E)
    prog.launch("col2im<float>", grid_c, block_c, (cols_e, dx_e, *sizes), order="reverse")
    same_cols = np.array_equal(cols_e, backend.im2col(xe, KE, Y0E, Y1E, np.empty_like(cols_e)))
    same_dx = np.array_equal(dx_e, backend.col2im(cols_e, KE, Y0E, Y1E, np.zeros_like(xe)))
    print(f"im2col kernel, grid {grid_e} x block {block_e}: the CPU twin's bits: {same_cols}")
    print(f"col2im kernel, grid {grid_c} x block {block_c}: the CPU twin's bits: {same_dx}")
    assert same_cols and same_dx

# %% [markdown]
# ### Numbers recorded on a GPU
#
# The project has **not recorded any GPU numbers yet**: no run of these kernels on a GPU has been
# written down in the repository, so there is nothing to show here, and this tutorial will not
# make numbers up. On a machine with a GPU, the cell above prints them, and
# `python -m minunet.bench --device cuda` prints the hot loops and the whole network (checked
# against the CPU before timing, with GB/s and GFLOP/s beside each time).
#
# ## Summary
#
# * Every hot loop has one signature and one memory layout with two twins behind a dispatcher:
#   a CPU twin (NumPy slices or a Numba loop) and a CUDA kernel (`kernels/*.cu`), and the plain
#   whole-array op as the reference they are tested against.
# * The im2col kernel is a pure copy: grid.y picks one (channel, tap) row of the column matrix,
#   the threads run along its columns, so reads and writes are coalesced; the launch geometry
#   follows from the chunk's size.
# * col2im, the adjoint, sums into every input pixel. Written as a gather (a thread per pixel,
#   taps in a fixed order) it needs no atomics and gives the same bits on every run, the same
#   bits as the CPU twin and the plain op.
# * On the CPU the gather twin beats nine slice `+=`, and im2col costs a fraction of the GEMM
#   it feeds (timed above).
#
# ## Exercises
#
# **1. Simulate the kernel.** Grid row $r$ of the im2col kernel is one row $(c, i, j)$ of the
# column matrix; its threads $q$ read `x[src + y * W + xx]` with `y, xx = q // Wo, q % Wo`.
# Write `my_source_offset(c, i, j, y0, H, W)`: the flat offset `src` of `x[c, y0 + i, j]` in a
# `(C, H, W)` array, for a chunk that starts at output row `y0` (read it off the kernel's source
# in section 2). Self-check: the kernel is executed in NumPy with your offset, all threads of a
# grid row at once, and compared with the CPU twin bit for bit, for k = 3, 1 and 5 and three
# chunks of a non-square input.

# %%
def my_source_offset(c, i, j, y0, H, W):
    """The flat offset of x[c, y0 + i, j] in a C-contiguous (C, H, W) array."""
    raise NotImplementedError("your turn: the kernel's source offset")


report(check_source_offset(my_source_offset))

# %% [markdown]
# **2. Another order of additions.** The gather adds the taps in the order $(i, j)$ =
# (0,0), (0,1), ..., (2,2). With the reversed order, what fraction of the float32 pixels of `dx`
# differ from the twin's? Write it (0 to 1) into `my_fraction`; then try other permutations of
# `ORDER`. Self-check: compared with the fraction measured, within 0.15. The cell also checks
# that in float64 every order agrees with the fixed one to 1e-12 relative (the sums are the
# same numbers).

# %%
ORDER = list(range(9))[::-1]
order = np.broadcast_to(np.array(ORDER)[:, None, None, None], contrib.shape)
mine = ordered_sum(order)
my_fraction = None  # your prediction: the fraction of pixels that change

report(check_reorder_fraction(my_fraction, mine, dx_twin))
contrib64 = contrib.astype(np.float64)
sum64 = sum(contrib64[t] for t in ORDER)
ref64 = sum(contrib64[t] for t in range(9))
assert np.abs(sum64 - ref64).max() <= 1e-12 * np.abs(ref64).max()

# %% [markdown]
# **3. A scatter on the CPU.** `np.add.at` is NumPy's unbuffered scatter-add: the CPU analogue
# of one thread per column entry (it runs in order, so it is deterministic here). The cell builds
# the target index of every column entry and scatters. Predict how many times slower (or, below
# 1, faster) than the gather twin it is on a small layer, and write the ratio into `my_ratio`.
# Self-check: compared with the times measured here, within a factor of 10 (an order of
# magnitude). The cell also checks that the scatter computes the same `dx` (to float32
# rounding, relative 1e-5).

# %%
def scatter_col2im(dcols, shape, k):
    Cc, Hh, Ww = shape
    ho, wo = Hh - k + 1, Ww - k + 1
    c, i, j, y, xx = np.meshgrid(np.arange(Cc), np.arange(k), np.arange(k), np.arange(ho),
                                 np.arange(wo), indexing="ij")  # (C, k, k, Ho, Wo) each
    target = (c * Hh + y + i) * Ww + (xx + j)  # where each column entry was copied from
    out = np.zeros(Cc * Hh * Ww, dcols.dtype)
    np.add.at(out, target.ravel(), dcols.ravel())
    return out.reshape(Cc, Hh, Ww)


C_S, H_S = 32, 68  # a small layer: the scatter's index arrays take 40 bytes per entry
dcols_s = rng.standard_normal((C_S * 9, (H_S - 2) ** 2)).astype(np.float32)
t_scatter = median(timer(lambda: scatter_col2im(dcols_s, (C_S, H_S, H_S), 3), 1, 0))
t_gather = median(timer(
    lambda: backend.col2im(dcols_s, 3, 0, H_S - 2, np.zeros((C_S, H_S, H_S), np.float32)),
    REPEAT, 1))
my_ratio = None  # your prediction: t_scatter / t_gather

report(check_scatter_speed(my_ratio, t_scatter, t_gather))
dx_gather = backend.col2im(dcols_s, 3, 0, H_S - 2, np.zeros((C_S, H_S, H_S), np.float32))
dx_scatter = scatter_col2im(dcols_s, (C_S, H_S, H_S), 3)
assert np.abs(dx_scatter - dx_gather).max() / np.abs(dx_gather).max() < 1e-5

# %%
print(f"tutorial 08 ran in {time.perf_counter() - t_start:.1f} s "
      f"({'fast' if T.fast else 'full'} mode)")
