# %% [markdown]
# # 03. Softmax with the weighted cross-entropy
#
# The U-Net ends in a pixel-wise softmax and the paper's weighted cross-entropy (Sec. 3,
# Eqs. 1 and 2). This tutorial derives and checks the loss and its gradient, and builds the
# paper's weight map step by step:
#
# - the softmax fused with the cross-entropy, and its famous gradient $p - y$;
# - why the naive softmax overflows at large logits and the stable one does not;
# - the normalisation: a mean over all pixels, also the ignored ones;
# - the weight map on touching cells: class balance, the distances $d_1$ and $d_2$, the border
#   term, the final map;
# - the loss before training: $\ln 2$ when the two classes' scores are equal.
#
# **Know first:** tutorial 00 (gradient checks); logarithms and exponentials.
# **Takes:** about 10 s to run in full, 5 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU;
# 25 minutes to read.

# %%

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

import minunet.data.weightmap
import minunet.ops
from minunet.data import class_balance, synthetic_em, touching_cells, weight_map
from minunet.models.unet import UNetConfig, build_model, standardize
from minunet.nn.gradcheck import check_op, format_table
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_border_gap,
    check_loss_by_weight_sum,
    check_one_pixel_gradient,
    check_softmax_backward,
    report,
)

T = setup("03_softmax_loss")
rng = np.random.default_rng(T.seed)

# %% [markdown]
# ## Softmax and cross-entropy, fused
#
# At every output pixel $x$ the network gives $K$ scores (logits) $a_k(x)$, and the softmax
# turns them into probabilities (paper, Sec. 3):
#
# $$p_k(x) = \frac{\exp a_k(x)}{\sum_{k'=1}^{K} \exp a_{k'}(x)} .$$
#
# The cross-entropy of one pixel with true label $l$ is $\ell = -\log p_l$. Written in the
# logits, $\ell = -a_l + \log \sum_{k'} \exp a_{k'}$, and its derivative is
#
# $$\frac{\partial \ell}{\partial a_k} = -[k = l] + \frac{\exp a_k}{\sum_{k'} \exp a_{k'}}
#   = p_k - y_k ,$$
#
# with $y$ the one-hot label. The softmax's own Jacobian never has to be formed: fusing the two
# gives this simple gradient. minunet minimises the weighted mean over all $N H_o W_o$ output
# pixels of a batch (docs/DESIGN.md, "Loss"),
#
# $$L = \frac{1}{N H_o W_o} \sum_x w(x)\,\bigl(-\log p_{l(x)}(x)\bigr), \qquad
#   \frac{\partial L}{\partial a_k(x)} = \frac{w(x)\,\bigl(p_k(x) - y_k(x)\bigr)}{N H_o W_o}.$$

# %%
print(T.getsource(minunet.ops.softmax_cross_entropy_forward))
print(T.getsource(minunet.ops.softmax_cross_entropy_backward))

# %% [markdown]
# **Check.** On one pixel with 3 classes and weight 1, the backward equals $p - y$ to $10^{-15}$;
# the gradient check of the op (3 classes, random weights, a quarter of the pixels ignored with
# $w = 0$) passes below $10^{-7}$.

# %%
a = np.array([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
label = np.array([[[2]]])
loss1, cache1 = minunet.ops.softmax_cross_entropy_forward(a, label, np.ones((1, 1, 1)))
grad1 = minunet.ops.softmax_cross_entropy_backward(1.0, cache1).ravel()
p = np.exp(a.ravel()) / np.exp(a.ravel()).sum()
print(f"p = {p.round(4)}, y = [0 0 1], p - y = {(p - [0, 0, 1]).round(4)}, backward = "
      f"{grad1.round(4)}")

logits = rng.standard_normal((2, 3, 5, 4))
labels = rng.integers(0, 3, (2, 5, 4))
weights = rng.uniform(0.5, 2.0, (2, 5, 4)) * (rng.random((2, 5, 4)) > 0.25)
res = check_op("softmax_cross_entropy", minunet.ops.softmax_cross_entropy_forward,
               minunet.ops.softmax_cross_entropy_backward,
               {"logits": logits, "labels": labels, "weights": weights}, ("logits",), rng)
print(format_table(res))
assert np.abs(grad1 - (p - [0, 0, 1])).max() < 1e-15
assert res[0].passed and res[0].max_rel_error < 1e-7

# %% [markdown]
# **Your turn: the fused gradient.** Write `softmax_backward_mine(dloss, cache)`, the gradient
# of the loss with respect to the logits, from the derivation above: `cache` holds `probs`
# $(N, K, H, W)$, `labels` $(N, H, W)$, `weights` $(N, H, W)$ and `scale` $= 1/(N H W)$;
# `dloss` is the upstream gradient, a number. The cell checks it with the gradient checker and
# against `minunet.ops.softmax_cross_entropy_backward`, with hints from the coursework's
# catalogue of mistakes when it is wrong. Graded version: `python -m minunet.coursework`.

# %%
def softmax_backward_mine(dloss, cache):
    """dloss: a number. Returns dlogits (N, K, H, W)."""
    probs, labels, weights, scale = cache
    raise NotImplementedError("your turn: write the softmax cross-entropy gradient here")


report(check_softmax_backward(softmax_backward_mine))

# %% [markdown]
# ## Large logits: the naive softmax overflows
#
# $\exp$ overflows float64 above $a \approx 709$ (and float32 above 88): the naive formula then
# computes $\infty / \infty$, which is NaN. The remedy is exact algebra: subtracting any constant
# $m$ from all logits leaves $p$ unchanged, and with $m = \max_k a_k$ no exponential exceeds 1:
#
# $$\log p_l = (a_l - m) - \log \sum_k \exp(a_k - m).$$
#
# This is the first two lines of `softmax_cross_entropy_forward` above.
#
# **Check.** With logits $(10^4, 0)$ the naive softmax gives NaN; the op gives a loss of 0
# (within $10^{-12}$) for label 0, and exactly $10^4$ for label 1, since
# $-\log p_1 = -(0 - 10^4) + \log(1 + e^{-10^4}) = 10^4$.

# %%
big = np.array([1e4, 0.0])
with np.errstate(over="ignore", invalid="ignore"):  # what the naive formula runs into
    naive = np.exp(big) / np.exp(big).sum()
print("naive softmax of (1e4, 0):", naive)
big4 = big.reshape(1, 2, 1, 1)
ones = np.ones((1, 1, 1))
loss_l0 = float(minunet.ops.softmax_cross_entropy_forward(big4, np.array([[[0]]]), ones)[0])
loss_l1 = float(minunet.ops.softmax_cross_entropy_forward(big4, np.array([[[1]]]), ones)[0])
print(f"stable: loss with label 0 = {loss_l0}, with label 1 = {loss_l1}")
assert np.isnan(naive).any() and abs(loss_l0) < 1e-12 and loss_l1 == 1e4

# %% [markdown]
# ## The normalisation
#
# Why divide by the number of pixels $N H_o W_o$ and not, say, by the sum of the weights? With
# a per-pixel mean the loss, and so the size of a gradient step, does not depend on the tile
# size: the same learning rate works for a $188$ and a $572$ tile. Pixels with $w = 0$ (ignored,
# say outside an annotated region) contribute nothing, but they still count in the denominator,
# so ignoring pixels does not inflate the weight of the others. This is the contract in
# docs/DESIGN.md, "Loss".
#
# **Check.** The loss of a batch of two identical tiles equals the loss of one (to $10^{-15}$);
# setting $w = 0$ on the first half of the pixels of a uniform-loss tile halves the loss.

# %%
one = minunet.ops.softmax_cross_entropy_forward(logits[:1], labels[:1], weights[:1])[0]
two = minunet.ops.softmax_cross_entropy_forward(
    np.concatenate([logits[:1]] * 2), np.concatenate([labels[:1]] * 2),
    np.concatenate([weights[:1]] * 2))[0]
flat = np.zeros((1, 2, 4, 4))  # every pixel: p = (1/2, 1/2), loss ln 2
half_w = np.ones((1, 4, 4))
half_w[:, :2] = 0
full_loss = float(minunet.ops.softmax_cross_entropy_forward(flat, np.zeros((1, 4, 4), int),
                                                            np.ones((1, 4, 4)))[0])
half_loss = float(minunet.ops.softmax_cross_entropy_forward(flat, np.zeros((1, 4, 4), int),
                                                            half_w)[0])
print(f"one tile {float(one):.6f}, two copies {float(two):.6f}; "
      f"all weights 1: {full_loss:.6f}, half ignored: {half_loss:.6f}")
assert abs(float(one) - float(two)) < 1e-15 and abs(half_loss - full_loss / 2) < 1e-15

# %% [markdown]
# ## The paper's weight map, step by step
#
# The paper weights each pixel by (Eq. 2)
#
# $$w(x) = w_c(x) + w_0 \exp\!\left(-\frac{(d_1(x) + d_2(x))^2}{2\sigma^2}\right),
#   \qquad w_0 = 10,\ \sigma \approx 5 \text{ pixels},$$
#
# where $w_c$ balances the class frequencies and $d_1$, $d_2$ are the distances to the border of
# the nearest and the second-nearest cell. The second term is large only on background pixels
# squeezed between two cells, the thin gaps that the network must learn to keep open so that
# touching cells come out separate. minunet computes it in `minunet/data/weightmap.py`; here we
# rebuild it from its pieces on synthetic touching cells (like the paper's Fig. 3).
#
# ### Step 1: cells, separation borders, the class map
#
# Where two cells touch, the pixels on both sides of the shared edge become a *separation
# border* (found by morphology: a 3x3 neighbourhood that holds two different cells) and are set
# to background in the class map, as in the paper.

# %%
print(T.getsource(minunet.data.weightmap.separation_borders))

cells_data = touching_cells(192, seed=T.seed)
instances = cells_data.instances
classes = (cells_data.mask > 0).astype(np.int64)  # 1 = cell, 0 = background or border
n_cells = int(instances.max())
print(f"{n_cells} cells, {int(cells_data.borders.sum())} separation-border pixels, "
      f"{classes.mean():.1%} of the pixels are class 'cell'")

# %% [markdown]
# ### Step 2: class balance $w_c$
#
# $w_c$ gives a pixel of class $k$ the weight $N / (K n_k)$ ($N$ pixels, $n_k$ of them of class
# $k$, $K$ classes present), so each class has the same total weight and the weights average to 1:

# %%
print(T.getsource(minunet.data.weightmap.class_balance))
wc = class_balance(classes)

# %% [markdown]
# **Check.** $w_c$ averages to 1 (to $10^{-6}$, float32), and the two classes' total weights are
# equal (to a relative $10^{-6}$).

# %%
totals = [float(wc[classes == k].sum()) for k in (0, 1)]
print(f"mean w_c {wc.mean():.6f}; total weight per class {totals[0]:.1f}, {totals[1]:.1f}; "
      f"w_c = {', '.join(f'{v:.4f}' for v in sorted(set(wc.ravel().tolist())))}")
assert abs(wc.mean() - 1) < 1e-6 and abs(totals[0] - totals[1]) / totals[0] < 1e-6

# %% [markdown]
# ### Step 3: $d_1$ and $d_2$
#
# For every pixel, the distance to each cell (one Euclidean distance transform per cell), then
# the smallest and the second smallest of them. Done here the slow, obvious way, one full-image
# transform per cell; minunet's `border_term` restricts each transform to a window around its
# cell and keeps the two smallest on the fly, which gives the same numbers where the term is
# not negligible.

# %%
cells = np.where(classes > 0, instances, 0)  # cell pixels only (borders are background)
ids = [i for i in np.unique(cells) if i > 0]
distances = np.stack([ndimage.distance_transform_edt(cells != i) for i in ids])  # (cells, H, W)
distances.sort(axis=0)
d1, d2 = distances[0], distances[1]
w0, sigma = minunet.data.weightmap.W0, minunet.data.weightmap.SIGMA
border = np.where(cells == 0, w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2)), 0.0)
print(f"w0 = {w0}, sigma = {sigma}")
print(T.getsource(minunet.data.weightmap.weight_map))

# %% [markdown]
# ### Step 4: the final map
#
# **Check.** (1) Our border term equals minunet's `border_term` to $10^{-4}$ (it drops terms
# below $10^{-6} w_0$); (2) `weight_map` equals $w_c$ plus the border term to $10^{-4}$;
# (3) the border term is at most $w_0 = 10$ everywhere, about 8 on a typical separation-border
# pixel (one pixel from its own cell, two from the other: $d_1 + d_2 \approx 3$) and at least 4
# on every one of them, the ends of an edge included ($d_1 + d_2 \le 6$ px).

# %%
border_minunet = minunet.data.weightmap.border_term(cells)
w = weight_map(classes, instances)
err_border = np.abs(border - border_minunet).max()
err_map = np.abs(w - (wc + border)).max()
on_borders = border[cells_data.borders]
print(f"|ours - border_term| {err_border:.1e}; |weight_map - (w_c + border)| {err_map:.1e}")
print(f"border term: max {border.max():.2f}, on separation borders {on_borders.min():.2f} to "
      f"{on_borders.max():.2f}; weight map max {w.max():.2f}")
assert err_border < 1e-4 and err_map < 1e-4
assert border.max() <= w0 and np.median(on_borders) > 7 and on_borders.min() > 3.9

fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
panels = [(cells_data.image, "image", "gray"), (instances, "cells (instances)", "tab20"),
          (classes + 2 * cells_data.borders, "class map; borders (yellow)", "viridis"),
          (wc, "class balance w_c", "viridis"), (np.minimum(d1, 30), "d1 (clipped at 30)", "magma"),
          (np.minimum(d2, 30), "d2 (clipped at 30)", "magma"),
          (border, "w0 exp(-(d1+d2)^2 / 2 sigma^2)", "jet"), (w, "weight map w", "jet")]
for ax, (data, title, cmap) in zip(axes.ravel(), panels, strict=True):
    im = ax.imshow(data, cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    if title.startswith(("d", "w0", "weight", "class b")):
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
fig.tight_layout()
T.figure(fig, "weight_map")
plt.show()

# %% [markdown]
# The border term lights up the narrow gaps and the separation borders between touching cells
# (up to about $w_0 = 10$, against a class weight near 1), and fades within a few $\sigma$ of
# them; far from two cells at once it is zero. During training (tutorial 05) these maps are
# computed once per label image and deformed together with the image.
#
# ## The loss before training: $\ln 2$
#
# A classic sanity check: before training, a classifier should not prefer any class, so its
# logits are about equal, $p_k \approx 1/K$, and the unweighted loss is about $\ln K$; for the
# U-Net's two classes $\ln 2 \approx 0.693$. With the weight map the expected loss is
# $\bar w \ln 2$, with $\bar w$ the mean weight.
#
# A freshly He-initialised U-Net does not quite start there: its logits are of order 1 or
# larger (the ReLUs' positive outputs add up over 23 layers and the skips), so it starts with
# a random preference for one class, and its first loss is usually larger than $\ln 2$ and
# varies with the seed. That is one reason for the learning-rate warm-up of
# tutorial 05. Shrinking the last layer's weights (here by a factor 1000) makes the logits
# equal and brings the loss to $\ln 2$.
#
# **Check.** Zero logits give exactly $\ln 2$ unweighted and $\bar w \ln 2$ weighted (to
# $10^{-6}$, float32). Fresh U-Nets (base 8, one synthetic $252 \times 252$ tile, output
# $68 \times 68$, three seeds) have logits whose two classes differ by more than 0.5 on average;
# with the last layer shrunk, the loss is $\ln 2$ within 0.01.

# %%
sample = synthetic_em(252, seed=T.seed)
x = standardize(sample.image.astype(np.float32) / 255)[None, None]  # (1, 1, 252, 252)
lab = (sample.label[92:-92, 92:-92] > 0).astype(np.int64)[None]  # (1, 68, 68): output pixels
w_tile = weight_map((sample.label > 0).astype(np.int64))[92:-92, 92:-92][None]  # (1, 68, 68)
ones = np.ones_like(w_tile)
zero = np.zeros((1, 2, 68, 68), np.float32)
unweighted0 = float(minunet.ops.softmax_cross_entropy_forward(zero, lab, ones)[0])
weighted0 = float(minunet.ops.softmax_cross_entropy_forward(zero, lab, w_tile)[0])
print(f"ln 2 = {np.log(2):.6f}; zero logits: unweighted {unweighted0:.6f}, weighted "
      f"{weighted0:.6f} = mean w {w_tile.mean():.4f} x ln 2 = {w_tile.mean() * np.log(2):.6f}")

for seed in range(3):
    model = build_model(UNetConfig(base=8), seed=seed).eval()
    out = model.forward(x)  # (1, 2, 68, 68)
    gap = float(np.abs(out[:, 0] - out[:, 1]).mean())
    fresh = float(minunet.ops.softmax_cross_entropy_forward(out, lab, ones)[0])
    model.params["final.weight"] *= 1e-3  # logits of both classes ~ equal
    shrunk = float(minunet.ops.softmax_cross_entropy_forward(model.forward(x), lab, ones)[0])
    print(f"seed {seed}: mean |a_0 - a_1| = {gap:.2f}, first loss {fresh:.3f}; "
          f"last layer shrunk: {shrunk:.4f}")
    assert gap > 0.5 and abs(shrunk - np.log(2)) < 0.01
assert abs(unweighted0 - np.log(2)) < 1e-6 and abs(weighted0 - w_tile.mean() * np.log(2)) < 1e-6

# %% [markdown]
# ## Summary
#
# - Softmax and cross-entropy fused have the gradient $p - y$, scaled by $w(x) / (N H_o W_o)$.
# - Subtracting the largest logit keeps every exponential $\le 1$: no overflow at any logit size.
# - The loss is a mean over all pixels, also those with $w = 0$: it does not depend on the tile
#   size, and ignored pixels count in the denominator.
# - The weight map is $w_c$ (equal total weight per class) plus $w_0 e^{-(d_1 + d_2)^2 /
#   2\sigma^2}$ with $w_0 = 10$, $\sigma = 5$, which is large in the gaps between touching cells.
# - With equal logits the loss is $\ln 2$ (two classes); a fresh U-Net starts higher.
#
# ## Exercises
#
# **1. The gradient of one pixel.** For logits $(1, 1, 1)$, label 0 and weight 2 on a single
# pixel, predict the gradient $\partial L/\partial a$ as a list of three numbers, write it into
# `my_grad` (six decimals are enough) and run the cell. Self-check: compared with the op's
# backward to six decimals.

# %%
my_grad = None  # e.g. [g0, g1, g2]

report(check_one_pixel_gradient(my_grad))

# %% [markdown]
# **2. $\sigma$ and the reach of the border term.** At what gap $d_1 + d_2$ does the border term
# fall to 1 % of $w_0$? Solve $\exp(-g^2 / 2\sigma^2) = 0.01$ for $g$ with $\sigma = 5$, write it
# into `my_gap` and run the cell. Self-check: compared with the solution to two decimals (the
# check computes it; the cell does not print it).

# %%
my_gap = None  # your g in pixels

report(check_border_gap(my_gap, sigma))

# %% [markdown]
# **3. The wrong normalisation.** Some implementations divide by $\sum_x w(x)$ instead of by the
# number of pixels. Write `loss_by_weight_sum(logits, labels, weights)` that does so, then find
# inputs of your own where it and minunet's loss disagree, and inputs where they agree.
# Self-check: on three random inputs of different shapes (not only the tutorial's), your loss
# equals minunet's times $N H_o W_o / \sum w$, so the two agree only when the weights average
# to 1.

# %%
def loss_by_weight_sum(logits, labels, weights):
    """logits (N, K, H, W), labels (N, H, W), weights (N, H, W). Returns the loss, a number."""
    raise NotImplementedError("your turn: the loss divided by the sum of the weights")


report(check_loss_by_weight_sum(loss_by_weight_sum))
