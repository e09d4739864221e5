# %% [markdown]
# # 01. Convolution as a matrix product
#
# The U-Net spends almost all of its time in its 3x3 convolutions. This tutorial builds one
# from a copy and a single matrix product, derives its backward pass, and checks both:
#
# - im2col by hand on a tiny image, with every entry of the column matrix labelled;
# - the forward as one product, the backward as three ($dW$, $db$, the column gradient) and
#   col2im, the adjoint of im2col, with its `+=`;
# - the coverage map: how many windows touch each input pixel, which is why col2im adds;
# - why the fast path cuts the paper's 568x568 layer into row chunks, and what that buys,
#   measured.
#
# **Know first:** tutorial 00 (gradient checks); matrix products; NumPy reshapes.
# **Takes:** about 1 minute to run in full, 10 s in fast mode (`MINUNET_FAST=1`), on a
# 2-core CPU; 30 minutes to read.

# %%
import inspect
import time
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import minunet.ops
import minunet.ops.conv
from minunet.nn.gradcheck import check_op, format_table
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_col2im_overwrite,
    check_conv_backward,
    check_coverage_5x5,
    check_im2col_shape,
    report,
)

T = setup("01_convolution")
rng = np.random.default_rng(T.seed)

# %% [markdown]
# ## The convolution
#
# A valid (unpadded) convolution with stride 1, as in the paper, of an input $x$ of shape
# $(N, C_{in}, H, W)$ with a weight $w$ of shape $(C_{out}, C_{in}, k, k)$ and a bias $b$:
#
# $$\mathrm{out}[n, o, y, x'] = b[o] + \sum_{c=0}^{C_{in}-1} \sum_{i=0}^{k-1} \sum_{j=0}^{k-1}
#   w[o, c, i, j]\; x[n, c, y + i, x' + j]$$
#
# for $0 \le y < H_o = H - k + 1$ and $0 \le x' < W_o = W - k + 1$: every 3x3 layer shrinks the
# map by 2 pixels (572 becomes 570, then 568).
#
# ## im2col: one column per output pixel
#
# The triple sum is a dot product between the weights of output channel $o$ and the $C_{in} k^2$
# input values under the window at $(y, x')$. Copy each window into one column of a matrix,
#
# $$\mathrm{cols}[(c k + i) k + j,\ (n H_o + y) W_o + x'] = x[n, c, y + i, x' + j]
#   \qquad \text{shape } (C_{in} k^2,\ N H_o W_o),$$
#
# and the whole convolution becomes one matrix product with $W_2 = w$ reshaped to
# $(C_{out}, C_{in} k^2)$:
#
# $$\mathrm{out}_2 = W_2\, \mathrm{cols} + b\,\mathbf 1^T \qquad (C_{out},\ N H_o W_o).$$
#
# minunet's `im2col` does the copy with one slice per kernel offset $(i, j)$, never one per
# pixel:

# %%
print(T.getsource(minunet.ops.conv.im2col))

# %% [markdown]
# Let us do it on a tiny image, one channel of $4 \times 5$ pixels numbered 0 to 19, with a
# 3x3 kernel: $H_o = 2$, $W_o = 3$, so the column matrix is $9 \times 6$. Each of its entries is
# the number of the input pixel it was copied from.

# %%
x_small = np.arange(20, dtype=np.float64).reshape(1, 1, 4, 5)  # pixel number = value
cols = minunet.ops.im2col(x_small, 3)
print("input (pixel numbers):\n", x_small[0, 0].astype(int))
print("cols, shape", cols.shape, "(rows: kernel offset (i, j); columns: output pixel (y, x)):")
print(cols.astype(int))

fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [5, 6.5]})
ax = axes[0]
ax.imshow(x_small[0, 0], cmap="Blues", vmin=-5, vmax=25)
for (r, c), v in np.ndenumerate(x_small[0, 0]):
    ax.text(c, r, f"{int(v)}\n({r},{c})", ha="center", va="center", fontsize=8)
ax.add_patch(plt.Rectangle((0.5, -0.5), 3, 3, fill=False, ec="red", lw=2))
ax.set_title("input x[0, 0]: pixel number (row, col)\nred: the window of output (0, 1)")
ax.set_xticks([])
ax.set_yticks([])
ax = axes[1]
ax.imshow(cols, cmap="Blues", vmin=-5, vmax=25, aspect="auto")
for (r, c), v in np.ndenumerate(cols):
    ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=9,
            color="red" if c == 1 else "black")
ax.set_yticks(range(9), [f"c0 i{i} j{j}" for i in range(3) for j in range(3)], fontsize=8)
ax.set_xticks(range(6), [f"y{y} x{xx}" for y in range(2) for xx in range(3)], fontsize=8)
ax.set_title("cols (9 x 6): the window of each output pixel is a column")
T.figure(fig, "im2col")
plt.show()

# %% [markdown]
# **Check.** The column matrix equals the definition written as plain loops, and
# `conv2d_forward` equals the triple sum of the definition computed with loops, on random
# inputs with 2 images, 3 input and 4 output channels: both differences must be below
# $10^{-12}$ (float64 rounding).

# %%
def conv_by_loops(x, w, b):
    N, C, H, W = x.shape
    O, _, k, _ = w.shape
    out = np.zeros((N, O, H - k + 1, W - k + 1))
    for n, o, y, xx in np.ndindex(*out.shape):
        out[n, o, y, xx] = b[o] + np.sum(w[o] * x[n, :, y : y + k, xx : xx + k])
    return out


def im2col_by_loops(x, k):
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    cols = np.zeros((C * k * k, N * Ho * Wo))
    for n, c, i, j, y, xx in np.ndindex(N, C, k, k, Ho, Wo):
        cols[(c * k + i) * k + j, (n * Ho + y) * Wo + xx] = x[n, c, y + i, xx + j]
    return cols


x = rng.standard_normal((2, 3, 7, 6))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
diff_cols = np.abs(minunet.ops.im2col(x, 3) - im2col_by_loops(x, 3)).max()
diff_out = np.abs(minunet.ops.conv2d_forward(x, w, b)[0] - conv_by_loops(x, w, b)).max()
print(f"im2col vs loops: {diff_cols:.1e}; conv2d_forward vs loops: {diff_out:.1e}")
assert diff_cols < 1e-12 and diff_out < 1e-12

# %% [markdown]
# ## The backward pass
#
# Lay out the upstream gradient $\bar{\mathrm{out}}$ like the product's result,
# $D$ of shape $(C_{out}, N H_o W_o)$. The forward is $\mathrm{out}_2 = W_2\,\mathrm{cols} +
# b\,\mathbf 1^T$, so for the scalar loss $L$, with $\langle A, B \rangle = \sum A \odot B$:
#
# $$dL = \langle D,\ dW_2\, \mathrm{cols} + W_2\, d\mathrm{cols} + db\, \mathbf 1^T \rangle
#      = \langle D\, \mathrm{cols}^T, dW_2 \rangle + \langle W_2^T D, d\mathrm{cols} \rangle
#        + \langle D \mathbf 1, db \rangle ,$$
#
# (moving a matrix across the inner product transposes it), which reads off three products:
#
# $$\bar W_2 = D\, \mathrm{cols}^T, \qquad \bar b = D\,\mathbf 1 \ \text{(row sums)}, \qquad
#   \bar{\mathrm{cols}} = W_2^T D .$$
#
# The last step goes from the columns back to the image. im2col is linear, a copy:
# $\mathrm{cols} = M x$ for a matrix $M$ of zeros and ones. Its adjoint $M^T$ sends every column
# entry back to the pixel it was copied from, and **adds** the entries that came from the same
# pixel: $\bar x = M^T \bar{\mathrm{cols}} = \mathrm{col2im}(\bar{\mathrm{cols}})$.
#
# ### The same, index by index
#
# If matrix differentials are new to you, the chain rule on single entries gives the same
# three results. The forward, written out for one output entry, is
#
# $$\mathrm{out}[n, o, y, x] = b_o + \sum_{c, i, j} w[o, c, i, j]\; x[n, c, y + i, x + j] .$$
#
# The loss depends on a weight $w[o, c, i, j]$ through every output entry of channel $o$
# (every image $n$, every position $(y, x)$), each with the slope $x[n, c, y + i, x + j]$, so
#
# $$\frac{\partial L}{\partial w[o, c, i, j]} = \sum_{n, y, x}
#   \bar{\mathrm{out}}[n, o, y, x]\; x[n, c, y + i, x + j],
# \qquad
# \frac{\partial L}{\partial b_o} = \sum_{n, y, x} \bar{\mathrm{out}}[n, o, y, x] .$$
#
# In the matrix form, row $o$ of $D$ and row $(c, i, j)$ of cols both run over the columns
# $(n, y, x)$, so their dot product, entry $(o, (c, i, j))$ of $D\,\mathrm{cols}^T$, is
# exactly this sum. For an input pixel $x[n, c, p, q]$, the outputs that read it are those
# with $y + i = p$ and $x + j = q$: one per kernel offset $(i, j)$ whose window covers the
# pixel, at $(y, x) = (p - i, q - j)$ when that lies inside the $H_o \times W_o$ output:
#
# $$\frac{\partial L}{\partial x[n, c, p, q]} = \sum_{o} \sum_{\substack{i, j:\ 0 \le p - i < H_o
#   \\ 0 \le q - j < W_o}} \bar{\mathrm{out}}[n, o, p - i, q - j]\; w[o, c, i, j] .$$
#
# The inner sum has as many terms as windows cover the pixel (9 inside, 1 in a corner for a
# 3x3 kernel): the coverage map below, and the reason col2im adds. Entry $((c, i, j), (n, y,
# x))$ of $W_2^T D$ is one term, $\sum_o w[o, c, i, j]\, \bar{\mathrm{out}}[n, o, y, x]$; col2im
# adds it into pixel $(y + i, x + j)$.

# %%
print(T.getsource(minunet.ops.conv.col2im))
print(T.getsource(minunet.ops.conv.conv2d_backward))

# %% [markdown]
# **Check 1: col2im is the adjoint of im2col.** For any image $x$ and any column matrix $C$,
# $\langle \mathrm{im2col}(x), C\rangle = \langle x, \mathrm{col2im}(C)\rangle$ (the dot-product
# test). The two sides must agree to a relative $10^{-12}$.
#
# **Check 2: the gradients.** `check_op` compares $\bar x$, $\bar w$, $\bar b$ with central
# differences (tutorial 00); each relative error must be below $10^{-7}$, for a 3x3 kernel with
# the fused ReLU and for the 1x1 kernel of the U-Net's last layer.

# %%
C = rng.standard_normal((3 * 9, 2 * 5 * 4))
lhs = np.sum(minunet.ops.im2col(x, 3) * C)
rhs = np.sum(x * minunet.ops.col2im(C, x.shape, 3))
adjoint_err = abs(lhs - rhs) / abs(lhs)
print(f"<im2col(x), C> = {lhs:.10f}, <x, col2im(C)> = {rhs:.10f}, relative {adjoint_err:.1e}")
assert adjoint_err < 1e-12

results = check_op("conv2d (k=3)", minunet.ops.conv2d_forward, minunet.ops.conv2d_backward,
                   {"x": x, "w": w, "b": b}, ("x", "w", "b"), rng)
x1 = rng.standard_normal((2, 5, 4, 3))
results += check_op("conv2d (k=1)", minunet.ops.conv2d_forward, minunet.ops.conv2d_backward,
                    {"x": x1, "w": rng.standard_normal((2, 5, 1, 1)), "b": rng.standard_normal(2)},
                    ("x", "w", "b"), rng)
print(format_table(results))
assert all(r.passed and r.max_rel_error < 1e-7 for r in results)

# %% [markdown]
# (The ReLU fused into `conv2d_forward(..., relu=True)` is checked by `run_checks` with inputs
# kept away from its kink; see tutorial 00.)
#
# ## The coverage map: why col2im adds
#
# How many columns hold a copy of a given input pixel? Exactly as many as there are windows
# that cover it. `col2im` of a column matrix of ones counts them: the **coverage map**. An inner
# pixel of a 3x3 convolution sits in 9 windows, an edge pixel in 3 or fewer, a corner in 1.
# Each of those copies receives its own gradient, and the pixel's gradient is their sum: that
# is the `+=` in `col2im`. Writing `=` instead would keep only the last copy's contribution.

# %%
H = W = 8
k = 3
cover = minunet.ops.col2im(np.ones((k * k, (H - k + 1) * (W - k + 1))), (1, 1, H, W), k)[0, 0]
print(cover.astype(int))

fig, ax = plt.subplots(figsize=(4.2, 3.6))
im = ax.imshow(cover, cmap="viridis")
for (r, c), v in np.ndenumerate(cover):
    ax.text(c, r, int(v), ha="center", va="center", color="w" if v < 5 else "k", fontsize=8)
ax.set_title("coverage: 3x3 windows touching each pixel\n(8 x 8 input, 6 x 6 output)")
ax.set_xticks([])
ax.set_yticks([])
fig.colorbar(im, ax=ax, fraction=0.046)
T.figure(fig, "coverage")
plt.show()

# %% [markdown]
# **Check.** Every one of the $6 \cdot 6 = 36$ windows holds $k^2 = 9$ pixels, so the coverage
# map sums to $36 \cdot 9 = 324$; the inner pixels have coverage 9, the corners 1.

# %%
print(f"sum {cover.sum():.0f}, inner {cover[2:-2, 2:-2].min():.0f}..{cover[2:-2, 2:-2].max():.0f},"
      f" corners {cover[0, 0]:.0f} {cover[0, -1]:.0f} {cover[-1, 0]:.0f} {cover[-1, -1]:.0f}")
assert cover.sum() == 36 * 9 and np.all(cover[2:-2, 2:-2] == 9)
assert cover[0, 0] == cover[0, -1] == cover[-1, 0] == cover[-1, -1] == 1

# %% [markdown]
# ## The paper's 568x568 layer, and why the fast path cuts it into rows
#
# The U-Net's second layer takes the 64 channels of the first one, $570 \times 570$ pixels, to
# 64 channels of $568 \times 568$. Its column matrix has $64 \cdot 9$ rows and
# $568 \cdot 568$ columns: in float32 that is $64 \cdot 9 \cdot 568^2 \cdot 4$ bytes, about
# 743 MB, written once and read once by the product, and again in the backward pass.
# Memory that large is slow to touch: it does not fit in any cache, and every page must be
# faulted in the first time.
#
# The fast door, `minunet/fast/conv.py`, computes the same numbers in **row chunks**: the
# columns of a few output rows at a time, in reused workspaces, with one chunk per CPU core at
# a time (Numba loops for im2col and col2im). How big is a chunk? On the CPU at most
# `backend.CPU_CHUNK_BYTES`, 4 MiB, so that a chunk's columns are still in the CPU cache
# when the product reads them; on a GPU at most `backend.WORKSPACE_BYTES`, 64 MiB, which
# bounds the workspace's memory (tutorial 04's layer table shows this bound for each layer).
# Same function names, same signature, same cache:

# %%
import minunet.backend
import minunet.fast

print(minunet.fast.conv2d_forward.__module__, inspect.signature(minunet.fast.conv2d_forward))
print(minunet.ops.conv2d_forward.__module__, inspect.signature(minunet.ops.conv2d_forward))
print(f"column matrix of the 568x568 layer: {64 * 9 * 568 * 568 * 4 / 1e6:.0f} MB; chunks at "
      f"most {minunet.backend.CPU_CHUNK_BYTES / 2**20:.0f} MiB on the CPU, "
      f"{minunet.backend.WORKSPACE_BYTES / 2**20:.0f} MiB on a GPU")
assert (minunet.backend.CPU_CHUNK_BYTES, minunet.backend.WORKSPACE_BYTES) == (4 * 2**20,
                                                                              64 * 2**20)

# %% [markdown]
# Now time both doors on one layer, forward and backward with the fused ReLU, in float32, and
# measure the peak memory each allocates (Python's `tracemalloc` sees NumPy's allocations). In
# full mode this is the paper's layer (64 channels, 570 -> 568); in fast mode a 16-channel
# layer of 318 -> 316 pixels. Each door runs once to warm up (Numba compiles or loads its loops
# on first use) and is then timed three times; the best time counts, since other programs on
# the machine can only make a run slower.
#
# **Check.** Both doors compute the same numbers: output and all three gradients agree to a
# relative $10^{-5}$ (float32 rounding in a different order). The fast door's peak memory must
# be less than half the plain door's. The times depend on the machine and on what else runs on
# it, so they are printed, not asserted.

# %%
import minunet.fast

channels, size = T.pick((64, 570), (16, 318))
xl = rng.standard_normal((1, channels, size, size)).astype(np.float32)
wl = (rng.standard_normal((channels, channels, 3, 3)) * np.sqrt(2 / (9 * channels))).astype(
    np.float32)
bl = np.zeros(channels, np.float32)


def run_layer(ops):
    out, cache = ops.conv2d_forward(xl, wl, bl, relu=True)
    grads = ops.conv2d_backward(np.ones_like(out), cache)
    return out, grads


measured = {}
for name, ops in (("plain", minunet.ops), ("fast", minunet.fast)):
    run_layer(ops)  # warm-up
    times = []
    for _ in range(3):
        tracemalloc.start()
        start = time.perf_counter()
        result = run_layer(ops)
        times.append(time.perf_counter() - start)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    measured[name] = (result, min(times), peak)
    print(f"{name:5s} door: forward + backward {min(times):6.2f} s (best of "
          f"{', '.join(f'{t:.2f}' for t in times)}), peak memory {peak / 1e6:6.0f} MB")

(out_p, grads_p), t_plain, m_plain = measured["plain"]
(out_f, grads_f), t_fast, m_fast = measured["fast"]
agree = max(np.abs(a - b).max() / np.abs(a).max()
            for a, b in zip((out_p, *grads_p), (out_f, *grads_f), strict=True))
print(f"speed-up {t_plain / t_fast:.1f}x, memory {m_plain / m_fast:.1f}x less; "
      f"largest relative difference {agree:.1e}")
assert agree < 1e-5 and m_fast < m_plain / 2

# %% [markdown]
# What the chunks buy: the plain door's peak is dominated by the column matrix and its
# gradient (the 743 MB above, twice), the fast door's by the arrays that must exist anyway
# (the output, its gradient and the input's gradient). And because the columns of a chunk are
# still in the cache when the product reads them, and every core works on its own chunks, the
# same arithmetic takes less time: the speed-up printed above. On a machine busy with other
# work the times scatter; `python -m minunet.bench` times every layer of the network with
# warm-up and repeats.
#
# ## Summary
#
# - im2col turns a convolution into one matrix product: one column per output pixel, one row
#   per (input channel, kernel row, kernel column).
# - The backward is three products with the same pieces, $\bar W_2 = D\,\mathrm{cols}^T$,
#   $\bar b = D\mathbf 1$, $\bar{\mathrm{cols}} = W_2^T D$, then col2im.
# - col2im is the adjoint of im2col; it adds because a pixel is copied into as many columns as
#   windows cover it (the coverage map: 9 inside, 1 at the corners).
# - The lesson's whole-array im2col needs 743 MB for the paper's second layer; the fast door
#   computes the same numbers in cache-sized row chunks on every core.
#
# ## Exercises
#
# **1. Shapes.** Predict the shape of `im2col(x, 3)` for `x` of shape `(2, 3, 10, 9)`, write it
# into `my_shape`, and run the cell. Self-check: it must equal the real shape.

# %%
my_shape = None  # your prediction, e.g. (rows, columns)

report(check_im2col_shape(my_shape))

# %% [markdown]
# **2. Overwrite instead of add.** Write `col2im_overwrite(cols, x_shape, k)`, a col2im with `=`
# in place of `+=` (the code printed above shows where). Self-check: with `=`, every pixel keeps
# exactly one copy (a column matrix of ones gives an image of ones), and so the dot-product
# test against im2col fails.

# %%
col2im_overwrite = None  # your function (cols, x_shape, k) -> dx

report(check_col2im_overwrite(col2im_overwrite))

# %% [markdown]
# **3. Coverage of a 5x5 kernel.** Predict the coverage of an inner pixel (row 5, column 5),
# of a corner, and the sum of the map over a $10 \times 10$ input for $k = 5$; write the three
# numbers into `my_coverage`. Self-check: compared with the map that `col2im` computes (the
# check computes the map itself and prints only whether you are right).

# %%
my_coverage = None  # [inner, corner, sum]

report(check_coverage_5x5(my_coverage))

# %% [markdown]
# **4. Your turn: the backward.** Write `conv_backward_mine(dout, cache)`, the gradients of
# `conv2d_forward(x, w, b)` (without the ReLU), from the index-level or the matrix derivation
# above: `cache` holds `x` and `w` (and `out`, None here); return `(dx, dw, db)`. You may use
# `minunet.ops.im2col` and `minunet.ops.col2im`. The cell checks it with the gradient checker
# and against `minunet.ops.conv2d_backward`; a wrong answer gets a hint from the coursework's
# catalogue of typical mistakes. Graded version: `python -m minunet.coursework`.

# %%
def conv_backward_mine(dout, cache):
    """dout: (N, Cout, Ho, Wo). Returns dx (N, Cin, H, W), dw (Cout, Cin, k, k), db (Cout,)."""
    x, w, _ = cache
    raise NotImplementedError("your turn: write the convolution's backward here")


report(check_conv_backward(conv_backward_mine))
