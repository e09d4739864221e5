# %% [markdown]
# # 11. Normalisation, padding and stride
#
# The 2015 U-Net has no normalisation, pads nothing and strides only in its pools. Its
# successors (the U-Net with BatchNorm, the Residual U-Net, UNet++, UNet 3+, the MobileNetV2 and
# EfficientNet encoders) normalise after almost every convolution, pad to keep sizes, stride
# to down-sample, split channels into groups, and interpolate instead of learning the
# up-sampling. This tutorial takes the ops they are built on apart:
#
# - BatchNorm's backward derived on its graph, and checked with the gradient checker;
# - why BatchNorm behaves differently at batch 1 and in eval mode, shown numerically;
# - padding and stride as two small changes to im2col, with the column matrices' shapes;
# - the depthwise convolution's cost against the dense one at a MobileNetV2-like layer;
# - bilinear up-sampling as a matrix, and its backward as the adjoint (a dot-product test).
#
# **Know first:** tutorials 00 (gradient checks) and 01 (im2col).
# **Takes:** about 2 s to run in full and in fast mode (`MINUNET_FAST=1`: the same small
# sizes), on a 2-core CPU; 25 minutes to read.

# %%

import matplotlib.pyplot as plt
import numpy as np

from minunet.nn.gradcheck import check_op, format_table
from minunet.ops import conv_general, norm, resample
from minunet.tutorial import setup

T = setup("11_normalisation_padding_stride")
rng = np.random.default_rng(T.seed)


def judge(what: str, passed: bool, expect: bool) -> None:
    """A self-check: says whether `what` passed, and whether that is what it should do."""
    verdict = "as it should" if passed == expect else "UNEXPECTED: look at this cell again"
    print(f"{'PASS' if passed else 'FAIL'}  {what}  ({verdict})")
    assert passed == expect, what


def bn_inputs(shape, training=True):
    """x, gamma, beta and fresh running statistics for batchnorm2d_forward."""
    C = shape[1]
    return {"x": rng.standard_normal(shape) * 2 + 0.5, "gamma": rng.uniform(0.5, 1.5, C),
            "beta": rng.standard_normal(C), "running_mean": np.zeros(C),
            "running_var": np.ones(C), "num_batches": np.array([3]), "training": training}


# %% [markdown]
# ## BatchNorm on its graph
#
# For each channel, over its $M = N H W$ values (Ioffe and Szegedy 2015):
#
# $$\mu = \tfrac1M \textstyle\sum_i x_i, \quad \sigma^2 = \tfrac1M \sum_i (x_i - \mu)^2, \quad
#   \hat x_i = \frac{x_i - \mu}{s},\ s = \sqrt{\sigma^2 + \epsilon}, \quad
#   y_i = \gamma \hat x_i + \beta .$$
#
# The graph has three paths from an input $x_j$ to an output $y_i$: the direct one
# ($x_j \to \hat x_j$), the one through the mean and the one through the variance, which every
# output of the channel shares. Walking the graph backwards with $g_i = \gamma\, \partial L /
# \partial y_i$:
#
# $$\frac{\partial L}{\partial \sigma^2} = -\frac{1}{2 s^2}\sum_i g_i \hat x_i, \qquad
#   \frac{\partial L}{\partial \mu} = -\frac1s \sum_i g_i, \qquad
#   \frac{\partial L}{\partial x_j} = \frac{g_j}{s} + \frac{\partial L}{\partial \sigma^2}
#   \frac{2 (x_j - \mu)}{M} + \frac{1}{M}\frac{\partial L}{\partial \mu}$$
#
# (the variance's own term through $\mu$ vanishes: the deviations sum to zero). Collecting
# $1/s$ gives the compact form that `ops/norm.py` computes,
#
# $$\frac{\partial L}{\partial x_j} = \frac1s\Bigl(g_j - \overline{g} - \hat x_j\,
#   \overline{g \hat x}\Bigr),$$
#
# the upstream gradient minus its mean (the path through $\mu$) minus its projection on
# $\hat x$ (the path through $\sigma^2$). The cell below walks the graph node by node, as an
# autodiff would, and compares with the op's compact form.

# %%
inp = bn_inputs((2, 3, 4, 5))
x, gamma = inp["x"], inp["gamma"]
out, cache = norm.batchnorm2d_forward(**inp)
dout = rng.standard_normal(out.shape)
dx_op, dgamma_op, dbeta_op = norm.batchnorm2d_backward(dout, cache)

# the graph, node by node (one channel axis kept: shapes (1, C, 1, 1))
M = x.shape[0] * x.shape[2] * x.shape[3]
mu_ = x.mean(axis=(0, 2, 3), keepdims=True)
xc = x - mu_  # the deviations
var_ = (xc**2).mean(axis=(0, 2, 3), keepdims=True)
s_ = np.sqrt(var_ + 1e-5)
xhat_ = xc / s_
g_ = gamma[None, :, None, None] * dout  # dL/dxhat
d_xc = g_ / s_  # through xhat = xc / s, xc held fixed
d_s = -(g_ * xc / s_**2).sum(axis=(0, 2, 3), keepdims=True)  # through 1/s
d_var = d_s / (2 * s_)  # s = sqrt(var + eps)
d_xc = d_xc + d_var * 2 * xc / M  # var = mean(xc^2)
d_x = d_xc - d_xc.mean(axis=(0, 2, 3), keepdims=True)  # xc = x - mean(x)
print(f"graph walk vs compact form: max |difference| = {np.abs(d_x - dx_op).max():.1e} "
      f"(largest entry {np.abs(dx_op).max():.2f})")

# %% [markdown]
# **Check.** The gradient checker compares the op's backward with central differences
# (tutorial 00). Its rows for BatchNorm use a floor of 1e-3 of the largest entry (the
# gradient minus two projections that nearly cancel it leaves entries 1e-5 of the largest,
# where the difference quotient's own error is not small; `minunet/nn/gradcheck_family.py`
# has the measurement). The same check run on a backward that treats $\mu$ and $\sigma^2$ as
# constants, the most common mistake, must fail, and it does, by a wide margin.

# %%
wrt = ("x", "gamma", "beta")
right = check_op("batchnorm2d (training)", norm.batchnorm2d_forward,
                 norm.batchnorm2d_backward, bn_inputs((2, 3, 4, 5)), wrt, rng,
                 floor_fraction=1e-3)


def backward_constant_statistics(dout, cache):
    """A wrong backward: mu and var treated as constants (the eval-mode formula)."""
    dgamma = (dout * cache.xhat).sum(axis=(0, 2, 3))
    dbeta = dout.sum(axis=(0, 2, 3))
    return (cache.gamma[:, None, None] * dout * cache.inv_std[:, None, None], dgamma, dbeta)


wrong = check_op("batchnorm2d, mu and var held constant", norm.batchnorm2d_forward,
                 backward_constant_statistics, bn_inputs((2, 3, 4, 5)), wrt, rng,
                 floor_fraction=1e-3)
print(format_table(right + wrong))
judge("the op's backward", all(r.passed for r in right), True)
judge("a backward without the paths through mu and var", wrong[0].passed, False)

# %% [markdown]
# ## Batch 1, and eval mode
#
# In training mode the statistics come from the batch, so one image's output depends on the
# other images of its batch. At batch 1 they come from the image alone (over its $H \times W$
# pixels): the U-Net's single large tile still normalises, but every image is normalised by
# itself. A channel of one value cannot be normalised at all ($\sigma^2 = 0$): the op refuses.
# In eval mode the running statistics (updated in training with momentum 0.1, the variance
# unbiased, as in PyTorch) take their place: a fixed affine map, the same for every batch.
#
# The cell measures how much image 0's output moves when its batch partner is replaced, in
# both modes; then the mean of each channel's $\partial L / \partial x$, which training mode
# makes exactly zero (the path through $\mu$ removes it) and eval mode does not.

# %%
a, b1, b2 = (rng.standard_normal((1, 3, 6, 6)) * 2 + 0.5 for _ in range(3))
params = bn_inputs((1, 3, 6, 6))
for training in (True, False):
    outs = []
    for partner in (b1, b2):
        p = {**params, "x": np.concatenate([a, partner]), "training": training,
             "running_mean": np.full(3, 0.4), "running_var": np.full(3, 3.0)}
        outs.append(norm.batchnorm2d_forward(**p)[0][0])  # image 0's output
    mode = "training" if training else "eval    "
    print(f"{mode}: image 0's output moves by {np.abs(outs[0] - outs[1]).max():.3f} when "
          f"its partner changes")
try:
    norm.batchnorm2d_forward(**{**params, "x": a[:, :, :1, :1]})
except ValueError as e:
    print("one value per channel:", e)
for training in (True, False):
    p = bn_inputs((1, 3, 6, 6), training)
    o, c = norm.batchnorm2d_forward(**p)
    d = norm.batchnorm2d_backward(rng.standard_normal(o.shape), c)[0]
    print(f"batch 1, {'training' if training else 'eval'}: channel means of dx = "
          f"{np.abs(d.mean(axis=(0, 2, 3))).max():.1e} (largest)")

# %% [markdown]
# Training mode and eval mode also disagree on the data the network was trained on. Feed one
# fixed batch of 2 x 4 x 4 values per channel for 100 training steps: the running mean
# converges to the batch mean, but the running variance converges to the *unbiased* variance,
# $M / (M - 1)$ times the biased one that training normalises with. Eval mode then divides by
# a slightly larger $s$, so its outputs are smaller by $\sqrt{(M-1)/M}$ (with $M = 32$:
# 0.984). That is the convention (PyTorch's too), not a bug; it is one reason a network
# trained on small batches can behave differently at test time.

# %%
p = bn_inputs((2, 3, 4, 4))
p["beta"] = np.zeros(3)
for _ in range(100):
    train_out, _ = norm.batchnorm2d_forward(**p)
eval_out, _ = norm.batchnorm2d_forward(**{**p, "training": False})
M = 2 * 4 * 4
batch_mean, batch_var = p["x"].mean(axis=(0, 2, 3)), p["x"].var(axis=(0, 2, 3))
print(f"running mean - batch mean: {np.abs(p['running_mean'] - batch_mean).max():.1e}")
print(f"running var / batch var (biased): {(p['running_var'] / batch_var).round(4)}, "
      f"M/(M-1) = {M / (M - 1):.4f}")
ratio = np.abs(eval_out).sum() / np.abs(train_out).sum()
print(f"eval output / training output: {ratio:.4f}, sqrt((M-1)/M) = {np.sqrt((M - 1) / M):.4f}")
judge("eval mode equals training mode up to sqrt((M-1)/M)", abs(ratio - np.sqrt((M - 1) / M))
      < 1e-3, True)

# %% [markdown]
# ## Padding and stride are changes to im2col
#
# `ops/conv_general.py` keeps the column matrix of tutorial 01 (rows $(c, i, j)$, columns
# $(n, y, x)$) and changes two things. **Padding** $p$: im2col reads from $x$ padded with $p$
# zeros on every side, so output pixel $(y, x)$'s window starts at $(y - p, x - p)$ of the
# image; col2im sums into the padded gradient and crops the frame off again. **Stride** $s$:
# the window of output pixel $(y, x)$ starts at $(s y, s x)$, the slice of each offset steps
# by $s$, and $H_o = \lfloor (H + 2p - k)/s \rfloor + 1$. The matrix product is unchanged;
# only the number of columns changes. On one 6 x 6 image with 2 channels and $k = 3$:

# %%
x6 = rng.standard_normal((1, 2, 6, 6))
print("   p  s   cols shape   output")
for p, s in ((0, 1), (1, 1), (1, 2), (0, 2)):
    cols = conv_general.im2col_general(x6, 3, s, p)
    Ho = conv_general.conv_output_size(6, 3, s, p)
    print(f"   {p}  {s}   {str(cols.shape):11}  {Ho} x {Ho}")

# %% [markdown]
# The picture: the padded 8 x 8 grid of a 6 x 6 image with $p = 1$ (the frame of zeros
# grey), and the top-left corner of each window (red), at stride 1 and at stride 2. At
# stride 2 only every other window is read, and the last row and column of the padded grid
# are read by no window at all: their gradient is zero (as in PyTorch).

# %%
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
for ax, s in zip(axes, (1, 2), strict=True):
    grid = np.zeros((8, 8))
    grid[1:7, 1:7] = 1.0  # the image inside its frame
    ax.imshow(grid, cmap="Greys_r", vmin=-0.6, vmax=1.2)
    Ho = conv_general.conv_output_size(6, 3, s, 1)
    reads = np.zeros((8, 8))
    for y in range(Ho):
        for xx in range(Ho):
            reads[s * y : s * y + 3, s * xx : s * xx + 3] += 1
            ax.plot(s * xx, s * y, "s", color="tab:red", ms=6)
    for (r, c), v in np.ndenumerate(reads):
        ax.text(c, r + 0.32, f"{int(v)}", ha="center", fontsize=7, color="tab:blue")
    ax.set_title(f"k = 3, p = 1, s = {s}: {Ho} x {Ho} windows")
    ax.set_xticks(range(8))
    ax.set_yticks(range(8))
fig.suptitle("window corners (red); how many windows read each pixel (blue)", fontsize=9)
fig.tight_layout()
T.figure(fig, "padding_stride")
plt.show()

# %% [markdown]
# **Check.** col2im is the adjoint of im2col: for any $x$ and any column matrix $d$,
# $\langle \mathrm{im2col}(x), d\rangle = \langle x, \mathrm{col2im}(d)\rangle$. The
# dot-product test holds to rounding for the op, and fails for a col2im that puts every
# entry back one row too low (an offset off by one, as when the padding's offset is
# forgotten). Tutorial 01 shows col2im's loop; the coursework's `conv2d_general` exercise
# asks for its padded, strided form.

# %%
def dot_test(im2col, col2im, shape, k, s, p):
    """|<im2col(x), d> - <x, col2im(d)>| relative to their size."""
    x = rng.standard_normal(shape)
    cols = im2col(x, k, s, p)
    d = rng.standard_normal(cols.shape)
    lhs, rhs = np.vdot(cols, d), np.vdot(x, col2im(d, shape, k, s, p))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs))


def col2im_one_row_low(cols, x_shape, k, stride, padding):
    """A wrong col2im: every entry put back one row too low (an offset off by one)."""
    dx = conv_general.col2im_general(cols, x_shape, k, stride, padding)
    return np.roll(dx, 1, axis=2)


ok = dot_test(conv_general.im2col_general, conv_general.col2im_general, (2, 3, 7, 6), 3, 2, 1)
bad = dot_test(conv_general.im2col_general, col2im_one_row_low, (2, 3, 7, 6), 3, 2, 1)
print(f"the op's col2im: {ok:.1e}; one row too low: {bad:.2f}")
judge("the op's col2im is the adjoint of its im2col (k=3, s=2, p=1)", ok < 1e-12, True)
judge("a col2im that puts entries one row too low", bad < 1e-12, False)

# %% [markdown]
# ## The depthwise convolution's cost
#
# A dense $k \times k$ convolution from $C_{in}$ to $C_{out}$ channels has $C_{out} C_{in}
# k^2$ weights and spends $2\,C_{out} C_{in} k^2$ FLOP (a multiply and an add) per output
# pixel. With groups $= C$ each output channel sees only its own input channel: $C k^2$
# weights and $2 C k^2$ FLOP per pixel, $C$ times fewer. MobileNetV2 (Sandler et al. 2018)
# builds its blocks from a 1x1 expansion, a 3x3 depthwise convolution and a 1x1 projection;
# at one of its 56 x 56 layers (24 channels expanded 6 times to 144):

# %%
H = W = 56
C_in, t, k = 24, 6, 3
C = C_in * t


def cost(cout, cin_per_group, k, hw):
    """(parameters, FLOP per image) of a convolution without bias."""
    params = cout * cin_per_group * k * k
    return params, 2 * params * hw


rows = {
    "dense 3x3, 144 -> 144": cost(C, C, k, H * W),
    "depthwise 3x3, 144": cost(C, 1, k, H * W),
    "block: 1x1 24->144, dw 3x3, 1x1 144->24": tuple(
        sum(v) for v in zip(cost(C, C_in, 1, H * W), cost(C, 1, k, H * W),
                            cost(C_in, C, 1, H * W), strict=True)),
    "dense 3x3, 24 -> 24": cost(C_in, C_in, k, H * W),
}
for name, (params, flop) in rows.items():
    print(f"{name:42} {params:>8,} parameters  {flop / 1e6:8.1f} MFLOP")
dense, dw = rows["dense 3x3, 144 -> 144"], rows["depthwise 3x3, 144"]
print(f"dense / depthwise: {dense[0] / dw[0]:.0f} x the parameters and the FLOP (= C)")

# %% [markdown]
# **Check.** A depthwise convolution is $C$ separate single-channel convolutions: the
# grouped op equals the dense op applied channel by channel, to rounding.

# %%
xd = rng.standard_normal((2, 4, 9, 8))
wd = rng.standard_normal((4, 1, 3, 3))
grouped, _ = conv_general.conv2d_general_forward(xd, wd, None, 1, "same", groups=4)
by_channel = np.concatenate([conv_general.conv2d_general_forward(
    xd[:, c : c + 1], wd[c : c + 1], None, 1, "same")[0] for c in range(4)], axis=1)
print(f"grouped vs channel by channel: {np.abs(grouped - by_channel).max():.1e}")
mixed, _ = conv_general.conv2d_general_forward(xd, np.repeat(wd, 4, axis=1) / 4, None, 1,
                                               "same")
judge("groups = C: one filter per channel", np.abs(grouped - by_channel).max() < 1e-12, True)
judge("a dense conv with the filter shared over channels", np.abs(mixed - by_channel).max()
      < 1e-12, False)

# %% [markdown]
# ## Bilinear up-sampling is a matrix
#
# Bilinear interpolation by a factor $f$ is linear and separable: one small matrix per axis,
# $\mathrm{out} = A_h\, x\, A_w^\top$, with $A$ of shape $(f S, S)$ holding the two weights of
# the input pixels around each output pixel's source coordinate (`ops/resample.py`). Its
# backward is the adjoint, $dx = A_h^\top\, d\mathrm{out}\, A_w$. The two corner conventions
# give different matrices: `align_corners=False` (PyTorch's default) lines the pixel centres up
# and repeats the border pixels; `True` lines the corners up exactly. Every row sums to 1 (a
# constant image stays constant).

# %%
for align in (False, True):
    A = resample.interpolation_matrix(4, 2, align, np.float64)
    print(f"align_corners={align}: A (8, 4), row sums {np.unique(A.sum(axis=1).round(12))}")
    print(A.round(3))
fig, axes = plt.subplots(1, 2, figsize=(6, 3.6))
for ax, align in zip(axes, (False, True), strict=True):
    ax.imshow(resample.interpolation_matrix(4, 2, align, np.float64), cmap="viridis",
              vmin=0, vmax=1)
    ax.set_title(f"align_corners={align}")
    ax.set_xlabel("input pixel")
    ax.set_ylabel("output pixel")
fig.tight_layout()
T.figure(fig, "bilinear_matrix")
plt.show()

# %% [markdown]
# **Check.** The dot-product test: for any $x$ and any $d$ of the output's shape,
# $\langle \mathrm{up}(x), d\rangle = \langle x, \mathrm{up}^\top(d)\rangle$. The op's backward
# passes it; a backward built with the other corner convention (`align_corners` mixed up,
# a typical mistake) does not.

# %%
xb = rng.standard_normal((2, 3, 5, 4))
up, cache_b = resample.bilinear_upsample_forward(xb, 4, align_corners=False)
db = rng.standard_normal(up.shape)
lhs = np.vdot(up, db)
rhs = np.vdot(xb, resample.bilinear_upsample_backward(db, cache_b))
_, cache_mixed = resample.bilinear_upsample_forward(xb, 4, align_corners=True)
rhs_mixed = np.vdot(xb, resample.bilinear_upsample_backward(db, cache_mixed))
print(f"<up(x), d> = {lhs:.6f}, <x, up^T(d)> = {rhs:.6f}, with the other corners: "
      f"{rhs_mixed:.6f}")
judge("bilinear backward is the adjoint", abs(lhs - rhs) < 1e-10 * abs(lhs), True)
judge("backward with align_corners mixed up", abs(lhs - rhs_mixed) < 1e-10 * abs(lhs), False)

# %% [markdown]
# ## What to take away
#
# - BatchNorm's backward has three paths per input; the compact form is the upstream gradient
#   minus its mean and its projection on $\hat x$, over $1/s$. Leaving the two shared paths
#   out is the classic mistake, and the gradient check catches it at once.
# - In training mode an image's output depends on its batch; at batch 1 on itself alone; in
#   eval mode on nothing but the running statistics, whose variance is the unbiased one.
# - Padding and stride change only which pixels im2col copies into the columns; col2im stays
#   its adjoint, and the dot-product test proves it.
# - A depthwise 3x3 layer costs $1/C$ of a dense one; MobileNetV2's whole block (expand to
#   144 channels, depthwise, project back to 24) costs about 1/23 of one dense 3x3 layer at
#   144 channels.
# - Bilinear up-sampling is $A_h x A_w^\top$; its backward is $A_h^\top d A_w$.
#
# The coursework hands out BatchNorm and the padded/strided convolution as exercises
# (`python -m minunet.coursework make OUT --ops batchnorm2d,conv2d_general`; see
# docs/TEACHERS.md).
