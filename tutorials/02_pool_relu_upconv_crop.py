# %% [markdown]
# # 02. Max-pool, ReLU, the 2x2 up-convolution, crop and concat
#
# The U-Net's other layers move gradients around more than they compute them. This tutorial
# derives and checks each backward:
#
# - 2x2 max-pool: the gradient is routed to each window's arg-max, drawn on a 4x4 example, and
#   the rule for ties;
# - ReLU: the mask is read from the output;
# - the 2x2 stride-2 up-convolution: a stamp per input pixel, and the adjoint (transpose) of a
#   2x2 stride-2 convolution, shown with the dot-product test;
# - the skip connection: crop's backward pads with zeros, concat's splits the channels.
#
# **Know first:** tutorials 00 (gradient checks) and 01 (convolution, adjoints).
# **Takes:** about 5 s to run in full, 5 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU;
# 25 minutes to read.

# %%

import matplotlib.pyplot as plt
import numpy as np

import minunet.ops
from minunet.nn.gradcheck import check_op, format_table
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_maxpool_backward,
    check_relu_backward,
    check_shared_ties,
    check_stamp,
    check_tie_rule,
    report,
)

T = setup("02_pool_relu_upconv_crop")
rng = np.random.default_rng(T.seed)

# %% [markdown]
# ## 2x2 max-pool
#
# Each output is the largest of a 2x2 window, with stride 2 (the windows do not overlap):
#
# $$\mathrm{out}[n, c, y, x] = \max_{i, j \in \{0, 1\}} x[n, c, 2y + i, 2x + j].$$
#
# Away from ties, the maximum is locally just one of its inputs, $x[n, c, 2y + i^\ast, 2x + j^\ast]$
# with $(i^\ast, j^\ast)$ the arg-max, so its derivative is 1 for the winner and 0 for the other
# three pixels:
#
# $$\bar x[n, c, 2y + i, 2x + j] = \begin{cases} \bar{\mathrm{out}}[n, c, y, x] &
#   (i, j) = (i^\ast, j^\ast) \\ 0 & \text{otherwise.} \end{cases}$$
#
# The forward keeps the arg-max of each window (as $2i + j$, one byte); the backward puts each
# window's gradient there:

# %%
print(T.getsource(minunet.ops.maxpool2x2_forward))
print(T.getsource(minunet.ops.maxpool2x2_backward))

# %% [markdown]
# On a 4x4 example, the winners (circled) receive the gradients of their windows; every other
# pixel receives 0:

# %%
x4 = np.array([[1, 6, 2, 0], [3, 4, 8, 5], [7, 2, 1, 1], [0, 5, 3, 9]], float).reshape(1, 1, 4, 4)
out4, cache4 = minunet.ops.maxpool2x2_forward(x4)
dout4 = np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 1, 2, 2)
dx4 = minunet.ops.maxpool2x2_backward(dout4, cache4)
print("out:\n", out4[0, 0], "\narg-max 2i+j:\n", cache4.arg[0, 0], "\ndx:\n", dx4[0, 0])

fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
winners = dx4[0, 0] != 0
for ax, data, title in ((axes[0], x4[0, 0], "x (winners circled)"),
                        (axes[1], dout4[0, 0], "dout (one per window)"),
                        (axes[2], dx4[0, 0], "dx = dout routed to the winner")):
    ax.imshow(data, cmap="Blues", vmin=-data.max() / 3, vmax=data.max())
    for (r, c), v in np.ndenumerate(data):
        ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=11)
    if data.shape == (4, 4):
        for t in (1.5,):
            ax.axhline(t, color="k", lw=2)
            ax.axvline(t, color="k", lw=2)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
for r, c in zip(*np.nonzero(winners), strict=True):
    axes[0].add_patch(plt.Circle((c, r), 0.4, fill=False, ec="red", lw=2))
T.figure(fig, "maxpool_routing")
plt.show()

# %% [markdown]
# ### Ties
#
# Where two pixels of a window share the maximum, the max has no derivative (a kink, tutorial
# 00): any split of the gradient among the tied pixels is a valid subgradient. minunet fixes
# one, written down in docs/DESIGN.md, "Max-pool ties": **each window is read in the order
# (0,0), (0,1), (1,0), (1,1), and the first maximum in that order wins** (a later value must be
# strictly greater to replace it). The whole gradient goes to that one pixel. NumPy's `argmax`
# returns the first maximum, so the plain op follows the rule by construction; the CPU twin and
# the CUDA kernel follow it by writing `>` rather than `>=`. Ties are common in practice: after
# a ReLU, many windows are all zeros.
#
# **Check.** A window of four equal values routes to position 0, `(0, 0)`;
# `[[1, 3], [3, 2]]` to position 1, `(0, 1)`; `[[0, 0], [5, 5]]` to 2, `(1, 0)`. On an input full of
# ties (integers 0..2 after a ReLU-like clamp), the fast door's arg-max equals the plain door's
# bit for bit, and each window's gradient arrives whole: the sum of $\bar x$ equals the sum of
# $\bar{\mathrm{out}}$ to $10^{-12}$.

# %%
windows = np.array([[[4, 4], [4, 4]], [[1, 3], [3, 2]], [[0, 0], [5, 5]]], float)
x_ties = windows.reshape(1, 3, 2, 2)
args = minunet.ops.maxpool2x2_forward(x_ties)[1].arg.ravel()
print("arg-max of the three windows:", args)
assert list(args) == [0, 1, 2]

x_many = np.maximum(rng.integers(-2, 3, (2, 4, 16, 16)), 0).astype(np.float64)
pooled, cache_many = minunet.ops.maxpool2x2_forward(x_many)
plain_arg = cache_many.arg
d = rng.standard_normal(plain_arg.shape)
dx = minunet.ops.maxpool2x2_backward(d, cache_many)
hits = x_many == pooled.repeat(2, axis=2).repeat(2, axis=3)  # (N, C, H, W): a window maximum
n_max = sum(hits[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1))  # (N, C, H/2, W/2)
tied = np.mean(n_max > 1)  # the windows with more than one maximum
print(f"{tied:.0%} of the windows have a tied maximum; sum dx - sum dout = "
      f"{dx.sum() - d.sum():.1e}")
assert abs(dx.sum() - d.sum()) < 1e-12

# %%
import minunet.fast

fast_arg = minunet.fast.maxpool2x2_forward(x_many)[1].arg
print(f"fast == plain arg-max: {np.array_equal(plain_arg, fast_arg)}")
assert np.array_equal(plain_arg, fast_arg)

# %% [markdown]
# And the gradient check (tutorial 00), on distinct values 0.1 apart so that no step of the
# central difference changes a winner: the relative error must be below $10^{-7}$.

# %%
n = 2 * 3 * 4 * 6
x_distinct = ((rng.permutation(n) - n / 2) * 0.1).reshape(2, 3, 4, 6)
res = check_op("maxpool2x2", minunet.ops.maxpool2x2_forward, minunet.ops.maxpool2x2_backward,
               {"x": x_distinct}, ("x",), rng)
print(format_table(res))
assert res[0].passed and res[0].max_rel_error < 1e-7

# %% [markdown]
# **Your turn: the max-pool backward.** Write `maxpool_backward_mine(dout, cache)`: `cache.arg`
# holds each window's winner as $a = 2i + j$; put each window's gradient there and 0 at the
# other three pixels. The cell checks it with the gradient checker and against
# `minunet.ops.maxpool2x2_backward`, and names the mistake (from the coursework's catalogue)
# when it is wrong. Graded version: `python -m minunet.coursework`.

# %%
def maxpool_backward_mine(dout, cache):
    """dout: (N, C, H/2, W/2); cache.arg: (N, C, H/2, W/2) uint8. Returns dx (N, C, H, W)."""
    raise NotImplementedError("your turn: write the max-pool backward here")


report(check_maxpool_backward(maxpool_backward_mine))

# %% [markdown]
# ## ReLU: the mask from the output
#
# $\mathrm{relu}(x) = \max(x, 0)$ has derivative 1 where $x > 0$ and 0 where $x < 0$ (at exactly
# 0 minunet takes 0). The backward needs to know where $x > 0$, and the output tells it:
# $\mathrm{out} > 0$ exactly where $x > 0$. So the cache keeps the output, which the next layer
# needs anyway, and the input can be freed; in the U-Net the ReLU is fused into the
# convolution (`conv2d_forward(..., relu=True)`), whose cache likewise keeps only the output.
#
# $$\bar x = \bar{\mathrm{out}} \odot [\mathrm{out} > 0]$$

# %%
print(T.getsource(minunet.ops.relu_forward))
print(T.getsource(minunet.ops.relu_backward))

# %% [markdown]
# **Check.** The mask from the output equals the mask from the input on random inputs (no value
# exactly 0), and the gradient check on $|x| \ge 0.1$ passes below $10^{-7}$.

# %%
xr = rng.standard_normal((2, 3, 5, 4))
out_r, cache_r = minunet.ops.relu_forward(xr)
same = np.array_equal(cache_r.out > 0, xr > 0)
xr_far = rng.uniform(0.1, 1.0, (2, 3, 5, 4)) * rng.choice([-1.0, 1.0], (2, 3, 5, 4))
res = check_op("relu", minunet.ops.relu_forward, minunet.ops.relu_backward, {"x": xr_far},
               ("x",), rng)
print(f"mask from output == mask from input: {same}")
print(format_table(res))
assert same and res[0].passed and res[0].max_rel_error < 1e-7

# %% [markdown]
# **Your turn: the ReLU backward.** Write `relu_backward_mine(dout, cache)` from the formula
# above (`cache.out` is the forward's output). The check also feeds it inputs of exactly 0,
# where the derivative is taken as 0. Graded version: `python -m minunet.coursework`.

# %%
def relu_backward_mine(dout, cache):
    """dout: the output's shape; cache.out: the forward's output. Returns dx."""
    raise NotImplementedError("your turn: write the ReLU backward here")


report(check_relu_backward(relu_backward_mine))

# %% [markdown]
# ## The 2x2 up-convolution
#
# Every step up the U-Net's expansive path starts with "a 2x2 convolution ('up-convolution')
# that halves the number of feature channels" (paper, Sec. 2): a transposed convolution with
# kernel 2 and stride 2. Its weight has the layout of `torch.nn.ConvTranspose2d`,
# $(C_{in}, C_{out}, 2, 2)$. With kernel and stride both 2 the output blocks do not overlap:
# input pixel $(y, x)$ alone paints the $2\times2$ block at $(2y, 2x)$,
#
# $$\mathrm{out}[n, o, 2y + i, 2x + j] = b[o] + \sum_c x[n, c, y, x]\, w[c, o, i, j].$$
#
# Think of it as a **stamp**: each input pixel stamps the $2 \times 2$ kernel, scaled by its
# value, into its own block of the output. One matrix product computes all four taps of every
# pixel, and a rearrangement puts tap $(i, j)$ of pixel $(y, x)$ at $(2y + i, 2x + j)$:

# %%
print(T.getsource(minunet.ops.upconv2x2_forward))

# %%
w_stamp = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
x_stamp = np.zeros((1, 1, 3, 3))
x_stamp[0, 0, 1, 2] = 1.0  # one pixel on: it stamps w at rows 2-3, columns 4-5
x_stamp[0, 0, 0, 0] = -0.5  # another, scaled by -0.5, at rows 0-1, columns 0-1
up, _ = minunet.ops.upconv2x2_forward(x_stamp, w_stamp, np.zeros(1))
print(up[0, 0])

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), gridspec_kw={"width_ratios": [3, 6]})
for ax, data, title in ((axes[0], x_stamp[0, 0], "input (3 x 3)"),
                        (axes[1], up[0, 0], "output (6 x 6): w stamped per pixel")):
    ax.imshow(data, cmap="RdBu_r", vmin=-4, vmax=4)
    for (r, c), v in np.ndenumerate(data):
        ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=9)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
for t in (1.5, 3.5):
    axes[1].axhline(t, color="k", lw=0.8)
    axes[1].axvline(t, color="k", lw=0.8)
T.figure(fig, "upconv_stamp")
plt.show()

# %% [markdown]
# ### The adjoint of a stride-2 convolution
#
# Why is it called a *transposed* convolution? Take a 2x2 convolution with stride 2 that maps
# $z$ of shape $(N, C_{out}, 2H, 2W)$ to $(N, C_{in}, H, W)$ with the same weights:
#
# $$\mathrm{conv}(z)[n, c, y, x] = \sum_{o, i, j} w[c, o, i, j]\, z[n, o, 2y + i, 2x + j].$$
#
# Then for every $x$ and $z$, $\langle \mathrm{up}(x), z \rangle = \sum w\, x\, z =
# \langle x, \mathrm{conv}(z) \rangle$ (bias 0): the up-convolution is the adjoint of this
# convolution, and so the up-convolution's input gradient **is** that strided convolution of
# $\bar{\mathrm{out}}$. Its weight gradient and bias gradient follow like the convolution's
# (tutorial 01), with the rearrangement undone first:
#
# $$\bar X = W_2\, D, \qquad \bar W_2 = X\, D^T, \qquad \bar b[o] = \sum_{n, y, x}
#   \bar{\mathrm{out}}[n, o, y, x],$$
#
# with $X$ the input as $(C_{in}, N H W)$, $W_2 = w$ as $(C_{in}, 4 C_{out})$ and $D$ the
# rearranged $\bar{\mathrm{out}}$, $(4 C_{out}, N H W)$.

# %%
print(T.getsource(minunet.ops.upconv2x2_backward))

# %% [markdown]
# **Check.** (1) The dot-product test of the adjoint: $\langle \mathrm{up}(x), z\rangle =
# \langle x, \bar x(z) \rangle$, with $\bar x(z)$ the input gradient `upconv2x2_backward`
# returns for $\bar{\mathrm{out}} = z$ (bias 0), to a relative $10^{-12}$, for several random
# $x$ and $z$: the backward's $\bar x$ **is** the adjoint, the strided convolution of $z$;
# (2) the gradient check of $x$, $w$, $b$ passes below $10^{-7}$.

# %%
xu = rng.standard_normal((2, 3, 3, 4))
wu = rng.standard_normal((3, 5, 2, 2))
bu = rng.standard_normal(5)
for _ in range(3):
    xt = rng.standard_normal(xu.shape)
    up_x, cache_u = minunet.ops.upconv2x2_forward(xt, wu, np.zeros(5))
    z = rng.standard_normal(up_x.shape)  # (N, Cout, 2H, 2W)
    lhs, rhs = np.sum(up_x * z), np.sum(xt * minunet.ops.upconv2x2_backward(z, cache_u)[0])
    print(f"<up(x), z> = {lhs:+.10f}, <x, dx(z)> = {rhs:+.10f}, "
          f"relative {abs(lhs - rhs) / abs(lhs):.1e}")
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
res = check_op("upconv2x2", minunet.ops.upconv2x2_forward, minunet.ops.upconv2x2_backward,
               {"x": xu, "w": wu, "b": bu}, ("x", "w", "b"), rng)
print(format_table(res))
assert all(r.passed and r.max_rel_error < 1e-7 for r in res)

# %% [markdown]
# ## Crop and concat: the skip connection
#
# Because the convolutions are unpadded, the encoder's map is larger than the decoder's map it
# joins: at the top level of the paper's network the encoder's $568 \times 568$ map is cropped
# to the decoder's $392 \times 392$ (paper, Fig. 1), a margin of $(568 - 392)/2 = 88$ pixels on
# each side. minunet then concatenates along the channels with the skip first,
# `[crop(skip), up]` (docs/DESIGN.md, "The paper's numbers").
#
# Both are linear, and their adjoints are simple. The crop keeps a window, so its backward
# **pads with zeros** back to the full size (the cut-off pixels did not affect the loss). The
# concat stacks two arrays, so its backward **splits** the gradient at the same channel.

# %%
print(T.getsource(minunet.ops.center_crop_forward))
print(T.getsource(minunet.ops.center_crop_backward))
print(T.getsource(minunet.ops.concat_backward))

# %% [markdown]
# **Check.** The crop's backward is zero outside the kept window and equal to
# $\bar{\mathrm{out}}$ inside; the dot-product test $\langle \mathrm{crop}(x), y\rangle =
# \langle x, \mathrm{crop}^T(y)\rangle$ holds to $10^{-12}$; the gradient checks of crop and
# concat pass below $10^{-7}$. (In the U-Net the encoder map also feeds the max-pool, so its
# gradient is the sum of the pool's and the crop's: `dh += dskips[i]` in `UNet.backward`,
# docs/DESIGN.md, "Gradients accumulate".)

# %%
xc = rng.standard_normal((2, 3, 9, 8))
yc, cache_c = minunet.ops.center_crop_forward(xc, (5, 4))
gc = rng.standard_normal(yc.shape)
dxc = minunet.ops.center_crop_backward(gc, cache_c)
inside = dxc[:, :, cache_c.top : cache_c.top + 5, cache_c.left : cache_c.left + 4]
outside = dxc.copy()
outside[:, :, cache_c.top : cache_c.top + 5, cache_c.left : cache_c.left + 4] = 0
adj = abs(np.sum(yc * gc) - np.sum(xc * dxc)) / abs(np.sum(yc * gc))
print(f"crop {xc.shape[2:]} -> {yc.shape[2:]} at top {cache_c.top}, left {cache_c.left}; "
      f"outside max {np.abs(outside).max()}, dot-product test {adj:.1e}")
res = check_op("center_crop", minunet.ops.center_crop_forward, minunet.ops.center_crop_backward,
               {"x": xc, "size": (5, 4)}, ("x",), rng)
res += check_op("concat", minunet.ops.concat_forward, minunet.ops.concat_backward,
                {"a": rng.standard_normal((2, 3, 4, 5)), "b": rng.standard_normal((2, 2, 4, 5))},
                ("a", "b"), rng)
print(format_table(res))
assert np.array_equal(inside, gc) and np.abs(outside).max() == 0 and adj < 1e-12
assert all(r.passed and r.max_rel_error < 1e-7 for r in res)

# %% [markdown]
# ## Summary
#
# - Max-pool routes each window's gradient to its arg-max, stored as one byte $2i + j$; ties go
#   to the first maximum in the order (0,0), (0,1), (1,0), (1,1), in every implementation.
# - ReLU's backward masks with $\mathrm{out} > 0$, so the cache keeps the output only.
# - The 2x2 stride-2 up-convolution stamps the kernel per input pixel; it is the adjoint of the
#   2x2 stride-2 convolution with the same weights, which is its input gradient.
# - Crop's backward pads with zeros, concat's splits; an encoder map used by pool and skip sums
#   both gradients.
#
# ## Exercises
#
# **1. The tie rule.** Which position (0 to 3, that is $2i + j$) receives the gradient for the
# window `[[2, 5], [5, 1]]`? And for `[[7, 7], [7, 9]]`? Write your answers into `my_args` and
# run the cell. Self-check: they must equal the op's arg-max.

# %%
my_args = None  # e.g. [a, b]

report(check_tie_rule(my_args))

# %% [markdown]
# **2. Share the gradient among ties.** Write `maxpool_backward_shared(dout, x)` that splits each
# window's gradient equally among all pixels that equal the window's maximum (a window with
# two tied maxima gives each half). It is another valid subgradient. Self-check: on an input
# full of ties, every tied maximum gets its equal share and every other pixel 0 (the check
# computes the shares itself; giving the whole gradient to the first or the last maximum is
# the op's tie rule, not a share, and fails).

# %%
def maxpool_backward_shared(dout, x):
    """dout: (N, C, H/2, W/2); x: (N, C, H, W), the forward's input. Returns dx (N, C, H, W)."""
    raise NotImplementedError("your turn: share each window's gradient among its maxima")


report(check_shared_ties(maxpool_backward_shared))

# %% [markdown]
# **3. Where does a pixel stamp?** An up-convolution input of $4 \times 4$ pixels has exactly one
# non-zero pixel, at row 3, column 1. Which output rows and columns are non-zero? Write them as
# `my_rows, my_cols` (lists) and run the cell. Self-check: compared with the op's output.

# %%
my_rows = my_cols = None  # e.g. [r0, r1], [c0, c1]

report(check_stamp(my_rows, my_cols))
