# %% [markdown]
# # 04. Assembling the U-Net
#
# Tutorials 01-03 built and checked every layer. This one puts the 23 layers together and
# checks the whole network:
#
# - why a 572 input gives a 388 output, and which input sizes are valid;
# - the per-layer table: shapes, parameters (31,030,658 in the paper's network), FLOPs, memory;
# - the receptive field, and what the hand-written backward shows about it: the gradient of one
#   output pixel with respect to the input;
# - the whole-network gradient check along random directions;
# - overfitting a single tile, the sanity check before any real training.
#
# **Know first:** tutorials 01-03.
# **Takes:** about 1 minute to run in full, 10 s in fast mode (`MINUNET_FAST=1`), on a
# 2-core CPU; 30 minutes to read.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import minunet.models.sizes
import minunet.models.unet
import minunet.ops
from minunet.data import synthetic_em
from minunet.models.unet import UNetConfig, build_model, describe, standardize
from minunet.nn.gradcheck import directional_check
from minunet.nn.optim import MomentumSGD, SGDConfig
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_broken_gradient,
    check_depth3_sizes,
    check_level_parameters,
    check_unet_level,
    report,
)

T = setup("04_unet")
rng = np.random.default_rng(T.seed)

# %% [markdown]
# ## Sizes: 572 -> 388
#
# Follow one side of the input, $s_0$, through the network of depth 4. On the way down, each
# level's two unpadded 3x3 convolutions take $4$ pixels and the 2x2 max-pool halves the rest,
# which must be even:
#
# $$s_{i+1} = \frac{s_i - 4}{2}, \qquad i = 0, 1, 2, 3 .$$
#
# The bottleneck's two convolutions give $b = s_4 - 4$. Unrolling,
# $s_0 = 16\, s_4 + 4\,(1 + 2 + 4 + 8) = 16 b + 124$. On the way up each level doubles
# (up-convolution) and takes 4 (two convolutions), $u \mapsto 2u - 4$, four times:
#
# $$\text{output} = 16 b - 4\,(1 + 2 + 4 + 8) = 16 b - 60 = s_0 - 184 .$$
#
# So the valid input sides are $124 + 16 b$, and the output must have at least one pixel,
# $16 b - 60 \ge 1$, so $b \ge 4$: the smallest valid input is 188 (output 4), and the paper's
# 572 has $b = 28$ and output $572 - 184 = 388$. Every stage subtracts a constant at its own
# scale, so the **margin** $s_0 - \text{output} = 184$ is the same for every valid size. All of
# this lives in `minunet/models/sizes.py`:

# %%
print(T.getsource(minunet.models.sizes.output_size))
print(T.getsource(minunet.models.sizes.valid_sizes))

# %% [markdown]
# **Check.** `output_size(572)` is 388; the valid sizes from 100 to 600 are exactly
# $124 + 16b$ for $b = 4, \dots, 29$; every one of them has output $s - 184$; an invalid size
# is refused with the nearest valid ones.

# %%
valid = minunet.models.sizes.valid_sizes(100, 600)
sizes = minunet.models.sizes
print("output_size(572) =", sizes.output_size(572), "; margin", sizes.size_margin())
print("valid sizes:", valid)
try:
    minunet.models.sizes.output_size(570)
except ValueError as e:
    print("output_size(570):", e)
assert minunet.models.sizes.output_size(572) == 388
assert valid == [124 + 16 * b for b in range(4, 30)]
assert all(minunet.models.sizes.output_size(s) == s - 184 for s in valid)

# %% [markdown]
# ## The network and its per-layer table
#
# `UNetConfig` holds the architecture (the paper's values are the defaults) and `build_model`
# makes the network, He-initialised (std $\sqrt{2/N}$, $N$ the inputs of one output unit; paper,
# Sec. 3). The forward pass is written out level by level, and the backward is its mirror
# image: read them side by side.

# %%
print(T.getsource(minunet.models.unet.UNet.forward))
print(T.getsource(minunet.models.unet.UNet.backward))

# %% [markdown]
# `describe` prints one row per layer for a given input size: output shape, parameters,
# forward GFLOP (2 per multiply-add), the output's memory and the layer's im2col workspace: its
# whole column matrix, capped at `backend.WORKSPACE_BYTES` = 64 MiB, the largest chunk the fast
# door cuts on a GPU (on the CPU its chunks are at most 4 MiB; tutorial 01). A training step
# costs about three forward passes (the backward computes two products per layer where the
# forward computes one).
#
# **Check.** For the paper's network (1 input channel, 2 classes, base 64, input 572) the
# table's parameters add up to the paper's 31,030,658, equal to those of the model that
# `build_model` makes, and the forward pass costs about 301 GFLOP (between 300 and 302).

# %%
paper = UNetConfig()
print(paper)
print(describe(paper, 572))
rows = minunet.models.unet.layer_table(paper, 572)
n_table = sum(r["params"] for r in rows)
n_model = build_model(paper).num_parameters()
gflop = sum(r["gflop"] for r in rows)
print(f"parameters: table {n_table:,}, model {n_model:,}; forward {gflop:.1f} GFLOP")
assert n_table == n_model == 31_030_658 and 300 < gflop < 302

# %% [markdown]
# ## The receptive field, measured with the backward
#
# Which input pixels can change one output pixel? The margin suggests a centred window of
# $184 + 1 = 185$ pixels. The hand-written backward answers
# exactly: put $\bar a = 1$ on one output pixel's logit and 0 elsewhere, run the backward, and
# the input gradient is non-zero exactly on the pixels that this output depends on (with this
# input; a ReLU that is off cuts a path). Its magnitude is the **effective receptive field**:
# how strongly each input pixel counts.
#
# The model skips the input gradient of its first layer, which training never needs
# (`need_dx=i > 0` in `UNet.backward` above); here we ask that layer for it by wrapping its
# backward.

# %%
def with_input_gradient(model):
    """Make model.backward also keep dL/dx of the input, in kept['dx']."""
    first = model.down[0][0]
    backward, kept = first.backward, {}

    def backward_keeping_dx(grads, dout, need_dx=True):
        kept["dx"] = backward(grads, dout, need_dx=True)
        return kept["dx"]

    first.backward = backward_keeping_dx
    return kept


size = T.pick(316, 252)
net = build_model(UNetConfig(base=T.pick(16, 4), dtype="float64"), seed=0).eval()
kept = with_input_gradient(net)
x_erf = standardize(synthetic_em(size, seed=T.seed).image / 255.0)[None, None]  # (1, 1, S, S)
out_side = minunet.models.sizes.output_size(size)


def input_gradient(row, col):
    logits = net.forward(x_erf)  # (1, 2, out, out)
    dlogits = np.zeros_like(logits)
    dlogits[0, 1, row, col] = 1.0  # d(logit of class 1 at one pixel)
    net.zero_grad()
    net.backward(dlogits)
    return kept["dx"][0, 0]  # (S, S)


def extent(g, axis):
    idx = np.nonzero(np.abs(g).sum(axis=axis))[0]
    return idx.min(), idx.max()


centre = out_side // 2 - (out_side // 2) % 16  # an output pixel on the 16-pixel pooling grid
g = input_gradient(centre, centre)
(r0, r1), (c0, c1) = extent(g, 1), extent(g, 0)
print(f"input {size}, output {out_side}; output pixel ({centre}, {centre}) depends on input rows "
      f"{r0}..{r1} ({r1 - r0 + 1} px) and columns {c0}..{c1} ({c1 - c0 + 1} px)")
print(f"output pixel ({centre}, {centre}) sits over input pixel ({centre + 92}, {centre + 92}); "
      f"the margin's window centred there: {centre}..{centre + 184} (185 px)")

# %% [markdown]
# Coordinates first. The output is 184 pixels smaller than the input, 92 on each side, so
# output pixel $(y, x)$ sits over input pixel $(y + 92, x + 92)$: that is where it lies in the
# image. A window of the margin's 185 pixels centred there runs from $y$ to $y + 184$ (92 on
# either side of $y + 92$); that is the "centred window" printed above, and why an input row
# index equal to the output pixel's own $y$ marks the window's start, not its centre.
#
# The measured window starts exactly there, at input row and column $y$, and spans 188 pixels,
# three more than the margin's 185. The max-pools are to blame: a 2x2 pool groups the pixels
# in fixed pairs, so an output pixel sees whole pooling windows, and how much extra that adds
# depends on where the pixel lies relative to the pools' grid. Let us measure the extent along
# one row for 16 neighbouring output pixels, one period of the grid of $2^4 = 16$ pixels.

# %%
widths = []
for col in range(centre - 8, centre + 8):
    lo, hi = extent(input_gradient(centre, col), 0)
    widths.append((col, lo - col, hi - col, hi - lo + 1))
for col, lo, hi, width in widths:
    print(f"output column {col}: input columns col{lo:+d} .. col{hi:+d}, {width} px")

# %% [markdown]
# Depending on its position modulo 16, an output pixel depends on 188 or 204 input pixels per
# side, from up to 15 pixels left of its own position to up to 199 right of it. The
# overlap-tile inference of tutorial 07 is exact anyway because tiles are cut on that same
# 16-pixel grid (`minunet/models/sizes.py`).
#
# The same numbers follow from the network's structure alone: `minunet.models.sizes.input_window`
# walks the layers backward with intervals (a 3x3 conv widens $[a, b]$ to $[a, b+2]$, a pool
# maps it to $[2a, 2b+1]$, an up-convolution halves it, a skip shifts it by its crop offset),
# and `receptive_field` is the widest window over one period of 16.

# %%
print(T.getsource(minunet.models.sizes.receptive_field))

# %% [markdown]
# **Check.** Every measured extent is at least the margin's 185 pixels and at most the
# receptive field's 204, equals the window `input_window` predicts for its position, and the
# centre pixel's extent starts at its own position.

# %%
ws = [w for *_, w in widths]
print(f"extents from {min(ws)} to {max(ws)} px; receptive_field() = "
      f"{minunet.models.sizes.receptive_field()}")
for col, lo, hi, _ in widths:  # input_window repeats with period 16, shifted by 16
    p_lo, p_hi = minunet.models.sizes.input_window(col % 16)
    assert (lo, hi) == (p_lo - col % 16, p_hi - col % 16), col
assert 185 <= min(ws) and max(ws) == minunet.models.sizes.receptive_field() == 204
assert c0 == centre and r0 == centre

a = np.abs(g)
half = next(s for s in range(1, size, 2)
            if a[r0 + 94 - s // 2 : r0 + 94 + s // 2 + 1,
                 c0 + 94 - s // 2 : c0 + 94 + s // 2 + 1].sum() >= a.sum() / 2)
print(f"half of the gradient's magnitude lies within a centred {half} x {half} window")

fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1.2]})
im = axes[0].imshow(np.log10(a + 1e-12), cmap="magma", vmin=np.log10(a.max()) - 6)
axes[0].add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False,
                                ec="cyan", lw=1.5, label=f"non-zero: {c1 - c0 + 1} px"))
axes[0].add_patch(plt.Rectangle((centre - 0.5, centre - 0.5), 185, 185, fill=False, ec="w",
                                ls="--", lw=1, label="margin window: 185 px"))
axes[0].legend(loc="lower left", fontsize=8)
axes[0].set_title(f"log10 |d logit / d input|, one output pixel\n(input {size} x {size})",
                  fontsize=10)
fig.colorbar(im, ax=axes[0], fraction=0.046)
cols_ = [c - centre for c, *_ in widths]
axes[1].bar(cols_, [hi - lo + 1 for _, lo, hi, _ in widths], color="C0")
axes[1].axhline(185, color="k", ls="--", lw=1, label="margin + 1 = 185")
axes[1].set_ylim(0, 240)  # from 0, so that the heights compare; room for the legend
axes[1].set_xlabel("output column, relative to a multiple of 16")
axes[1].set_ylabel("input pixels it depends on")
axes[1].set_title("extent per output pixel: a period of 16", fontsize=10)
axes[1].legend(fontsize=8, loc="upper center")
fig.tight_layout()
T.figure(fig, "receptive_field")
plt.show()

# %% [markdown]
# The effective receptive field is much smaller than the extent: the gradient's magnitude
# falls off fast away from the centre (note the log scale), so most of what decides a pixel
# lies within a few dozen pixels of it.
#
# ## The whole-network gradient check
#
# Every op passed its gradient check; does the assembled network? Checking each of the U-Net's
# parameters by central differences would take two forward passes per parameter. Instead,
# `directional_check` draws a random unit direction $d$ over all parameters at once and
# compares the slope of the loss along it, two ways:
#
# $$\underbrace{\sum_k \langle \nabla_k L, d_k \rangle}_{\text{backward}} \quad\text{vs.}\quad
#   \frac{L(\theta + h d) - L(\theta - h d)}{2h} .$$
#
# A wrong gradient anywhere shows up along almost every random direction. As in
# `tests/test_model.py`: a small float64 U-Net (base 2, input 188, two images), dropout on with
# a fixed key (the same masks in every pass), an up-convolution ReLU, non-zero biases, and a
# smaller step than for one op ($h = 10^{-6}$), since a step along $d$ could cross one of the
# network's many ReLU and max-pool kinks.

# %%
print(T.getsource(directional_check))

# %% [markdown]
# **Check.** Along each of 5 random directions the relative error is below $10^{-6}$
# (`THRESHOLD_DIRECTIONAL_FLOAT64`).

# %%
small = build_model(UNetConfig(base=2, dtype="float64", upconv_relu=True), seed=3)
for name in small.params:
    if name.endswith(".bias"):
        small.params[name] = rng.standard_normal(small.params[name].shape) * 0.1
xs = rng.standard_normal((2, 1, 188, 188))
labels_s = rng.integers(0, 2, (2, 4, 4))
weights_s = rng.random((2, 4, 4)) + 0.5


def loss_at(params):
    saved, small.params = small.params, params
    try:
        logits = small.forward(xs, dropout_key=11)
        return float(minunet.ops.softmax_cross_entropy_forward(logits, labels_s, weights_s)[0])
    finally:
        small.params = saved


loss, cache = minunet.ops.softmax_cross_entropy_forward(small.forward(xs, dropout_key=11),
                                                        labels_s, weights_s)
small.zero_grad()
small.backward(minunet.ops.softmax_cross_entropy_backward(1.0, cache))
checks = directional_check(loss_at, small.params, small.grads, n_dirs=5,
                           rng=np.random.default_rng(T.seed))
for c in checks:
    print(f"direction {c.direction}: backward {c.analytic:+.10f}, central difference "
          f"{c.numeric:+.10f}, relative error {c.rel_error:.1e}")
assert all(c.passed and c.rel_error < 1e-6 for c in checks)

# %% [markdown]
# ## Overfitting one tile
#
# Before training on real data, check that the network *can* learn: give it a single tile and
# nothing else, and the loss must go to about zero. If it does not, something between the loss
# and the parameters is broken (a gradient, a sign, the optimiser), whatever the gradient
# checks said. One training step is the forward pass, the loss, the backward pass, and the
# update of momentum SGD with the paper's momentum 0.99 (Caffe's form, tutorial 05):
#
#     logits = model.forward(x, dropout_key=it)
#     loss, cache = softmax_cross_entropy_forward(logits, labels, weights)
#     model.zero_grad(); model.backward(softmax_cross_entropy_backward(1.0, cache))
#     opt.step(model.grads, it)
#
# A small network (base 8, no dropout), one synthetic $252 \times 252$ tile (output
# $68 \times 68$), all weights 1, learning rate 0.03 after a 20-iteration warm-up.
#
# **Check.** In full mode (300 iterations) the loss falls below 2 % of its first value and
# at least 99 % of the tile's pixels are classified right; in fast mode (100 iterations) below
# 30 % and 90 %.

# %%
iters = T.pick(300, 100)
tile = synthetic_em(252, seed=T.seed)
x_tile = standardize(tile.image.astype(np.float32) / 255)[None, None]  # (1, 1, 252, 252)
y_tile = (tile.label[92:-92, 92:-92] > 0).astype(np.int64)[None]  # (1, 68, 68)
w_tile = np.ones(y_tile.shape, np.float32)
model = build_model(UNetConfig(base=8, dropout=0.0), seed=0)
opt = MomentumSGD(model.params, SGDConfig(lr=0.03, momentum=0.99, warmup=20))
history = []
start = time.perf_counter()
for it in range(iters):
    logits = model.forward(x_tile, dropout_key=it)
    loss, cache = minunet.ops.softmax_cross_entropy_forward(logits, y_tile, w_tile)
    model.zero_grad()
    model.backward(minunet.ops.softmax_cross_entropy_backward(1.0, cache))
    opt.step(model.grads, it)
    history.append(float(loss))
seconds = time.perf_counter() - start
model.eval()
pred = model.forward(x_tile).argmax(axis=1)  # (1, 68, 68)
accuracy = float((pred == y_tile).mean())
print(f"{iters} iterations in {seconds:.1f} s; loss {history[0]:.3f} -> {history[-1]:.4f} "
      f"({history[-1] / history[0]:.2%} of the first); pixel accuracy {accuracy:.2%}")

fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})
axes[0].semilogy(history)
axes[0].set_xlabel("iteration")
axes[0].set_ylabel("loss")
axes[0].set_title("loss on one tile")
for ax, data, title in ((axes[1], tile.image[92:-92, 92:-92], "tile (output region)"),
                        (axes[2], y_tile[0], "truth"), (axes[3], pred[0], "prediction")):
    ax.imshow(data, cmap="gray", interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
fig.tight_layout()
T.figure(fig, "overfit_one_tile")
plt.show()
assert history[-1] < T.pick(0.02, 0.30) * history[0] and accuracy >= T.pick(0.99, 0.90)

# %% [markdown]
# ## Summary
#
# - Valid input sides are $124 + 16b$ ($b \ge 4$); the output is 184 pixels smaller: 572 -> 388.
# - The paper's network has 31,030,658 parameters and costs about 301 GFLOP per forward pass
#   of a 572 tile.
# - The backward gives the input gradient of one output pixel: it depends on 188 or 204 input
#   pixels per side, depending on its position on the 16-pixel pooling grid, and mostly on the
#   few dozen closest.
# - The whole network's gradient matches central differences along random directions to
#   $10^{-6}$; and it can learn: one tile is overfitted in a few hundred iterations.
#
# ## Exercises
#
# **1. Valid sizes at another depth.** Derive the valid input sides and the margin of a U-Net of
# depth 3 (three pools). Write the smallest valid size and the margin into `my_smallest,
# my_margin`. Self-check: compared with `minunet.models.sizes` at `depth=3`.

# %%
my_smallest = my_margin = None  # your answers

report(check_depth3_sizes(my_smallest, my_margin))

# %% [markdown]
# **2. Parameters by hand.** Count the parameters of the paper's first level, `down0` (two 3x3
# convolutions, 1 -> 64 -> 64 channels, with biases), and of the up-convolution `up0.upconv`
# (128 -> 64 channels, 2x2, with bias). Write them into `my_down0, my_upconv0`. Self-check:
# compared with the counts of the layer table above.

# %%
my_down0 = my_upconv0 = None  # your counts

report(check_level_parameters(my_down0, my_upconv0))

# %% [markdown]
# **3. A broken gradient in a big network.** Write `break_one_layer(grads)`: it returns the
# gradient dict with ONE parameter's gradient scaled by 1.01 (a 1 % bug in one layer, e.g.
# `"up1.conv0.weight"`) and the others as they are. It gets a copy of `small.grads`, so it may
# change it in place. Predict first: will a directional check on 5 random directions notice a
# 1 % error in one of the network's 46 parameter tensors? Self-check: exactly one gradient
# scaled by 1.01, and then the directional check of the section above runs on your gradients
# and must fail on at least one direction (1 % is far above the $10^{-6}$ threshold).

# %%
def break_one_layer(grads):
    """grads: {name: array}, a copy of the model's gradients. Returns them with one
    parameter's gradient multiplied by 1.01."""
    raise NotImplementedError("your turn: break one layer's gradient by 1 %")


report(check_broken_gradient(break_one_layer, loss_at, small.params, small.grads, seed=T.seed))

# %% [markdown]
# **4. Your turn: one level of the U-Net.** Write one level of the contracting path as an op
# pair from the lesson's ops: `level_forward(x, w0, b0, w1, b1)` runs a 3x3 convolution with
# ReLU, another, and a 2x2 max-pool, and returns `((skip, down), cache)`: `skip` is the second
# convolution's output (what the skip connection crops and concatenates), `down` its pool
# (what the next level gets). `level_backward(dskip, ddown, cache)` returns
# `(dx, dw0, db0, dw1, db1)`. Use `minunet.ops.conv2d_forward(..., relu=True)`,
# `maxpool2x2_forward` and their backwards; mind that `skip` is used twice. The check runs the
# gradient checker on your pair and compares it with the network's own ops; a wrong answer
# gets a hint. Graded version: `python -m minunet.coursework`.

# %%
def level_forward(x, w0, b0, w1, b1):
    """x: (N, Cin, H, W); w0: (C, Cin, 3, 3); w1: (C, C, 3, 3). Returns ((skip, down), cache),
    skip (N, C, H-4, W-4), down (N, C, (H-4)/2, (W-4)/2)."""
    raise NotImplementedError("your turn: the level's forward")


def level_backward(dskip, ddown, cache):
    """dskip: skip's shape; ddown: down's shape. Returns (dx, dw0, db0, dw1, db1)."""
    raise NotImplementedError("your turn: the level's backward")


report(check_unet_level(level_forward, level_backward))
