# %% [markdown]
# # 06. Elastic deformation
#
# The U-Net paper trained on 30 images. What made that enough, the authors write, was data
# augmentation, above all *elastic deformation* (Ronneberger et al. 2015, Sec. 3.1):
#
# > We generate smooth deformations using random displacement vectors on a coarse 3 by 3 grid.
# > The displacements are sampled from a Gaussian distribution with 10 pixels standard
# > deviation. Per-pixel displacements are then computed using bicubic interpolation.
#
# This tutorial builds exactly that, one piece at a time, with the package's own code
# (`minunet/data/augment.py`):
#
# 1. the coarse 3x3 grid of random displacements and its 10 px standard deviation;
# 2. bicubic (cubic B-spline) upsampling of the grid to one displacement per pixel, derived and
#    checked;
# 3. the coordinate map, i.e. *where each output pixel reads from*, drawn as a quiver plot over a
#    deformed synthetic EM image;
# 4. why the image is interpolated with cubic splines but the labels with nearest neighbour
#    (labels must stay in their label set) and the weight map linearly;
# 5. a real training tile: input, labels and weight map deformed by one and the same map.
#
# **Know first:** NumPy; what an interpolating spline is helps but is not needed. Tutorial 03 built
# the weight map that is deformed here.
# **Takes:** about 20 s to run in full, 5 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU; 20
# minutes to read.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

from minunet.data import synthetic_em, weight_map
from minunet.data.augment import (
    AugmentConfig,
    coordinate_map,
    cubic_spline_matrix,
    draw_transform,
    elastic_displacement,
    is_integral,
    warp,
)
from minunet.data.tiles import random_tile
from minunet.models.sizes import output_size
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_grid_factor,
    check_label_warp,
    check_push_holes,
    report,
)

T = setup("06_elastic_deformation")
t_start = time.perf_counter()
SIZE = T.pick(572, 252)  # the side of the tile we deform (the paper's input tile: 572)
print(f"tile side: {SIZE} px")

# %% [markdown]
# ## 1. The coarse grid
#
# `AugmentConfig` holds every augmentation setting; its defaults are the paper's recipe. The
# elastic part has two numbers, the grid size and the standard deviation:

# %%
cfg = AugmentConfig()
print(f"elastic_grid  = {cfg.elastic_grid}   (coarse grid points per axis)")
print(f"elastic_sigma = {cfg.elastic_sigma} (px, std of each displacement component)")
print(T.getsource(draw_transform))

# %% [markdown]
# `draw_transform` draws *all* random parameters of one sample at once: the coarse grid
# (`coarse`, shape (2, 3, 3): a vertical and a horizontal displacement at each of the 9 nodes),
# a rotation angle, two flips and three gray-value parameters. For this tutorial we switch off
# everything but the elastic part:

# %%
elastic_only = AugmentConfig(rotate=False, flip=False, shift=False).only_geometry()
rng = np.random.default_rng(T.seed)
t = draw_transform(rng, elastic_only)
np.set_printoptions(precision=2, suppress=True)
print("dy at the 3x3 nodes (px):\n", t.coarse[0])
print("dx at the 3x3 nodes (px):\n", t.coarse[1])
print("angle:", t.angle, " flips:", t.flip_y, t.flip_x, " gamma:", t.gamma)

# %% [markdown]
# Each of the 18 numbers is an independent draw from $\mathcal N(0, \sigma^2)$ with
# $\sigma = 10$ px. Over $n$ draws the sample standard deviation has a standard error of about
# $\sigma/\sqrt{2n}$ (printed below for the $n = 18 \cdot 2000$ values drawn), so the check
# asserts that the measured standard deviation lies within **0.3 px** of 10 and the mean within
# **0.3 px** of 0, both many standard errors away.

# %%
draws = np.stack([draw_transform(rng, elastic_only).coarse for _ in range(2000)])
print(f"{draws.size} displacement components: mean {draws.mean():+.3f} px, "
      f"std {draws.std():.3f} px; standard error of the std "
      f"{cfg.elastic_sigma / np.sqrt(2 * draws.size):.3f} px")
assert abs(draws.std() - cfg.elastic_sigma) < 0.3 and abs(draws.mean()) < 0.3

# %% [markdown]
# ## 2. Bicubic upsampling: one displacement per pixel
#
# The 9 nodes sit on the tile: the corner nodes on the corner pixels, the middle node at the
# centre. A tile pixel at row $y$ of $H$ lies at the grid coordinate
# $s = 2y/(H-1) \in [0, 2]$ (likewise $t$ for the column). "Bicubic interpolation" is the
# **interpolating cubic B-spline**, the same one `scipy.ndimage` uses with `order=3`. In one
# dimension, node values $v_0, v_1, v_2$ become the curve
#
# $$
# f(s) = \sum_k c_k\, \beta^3(s - k), \qquad
# \beta^3(u) = \begin{cases}
#   \tfrac23 - u^2 + \tfrac12 |u|^3 & |u| < 1\\
#   \tfrac16 (2 - |u|)^3 & 1 \le |u| < 2\\
#   0 & \text{otherwise,}
# \end{cases}
# $$
#
# whose coefficients $c_k$ (over the mirrored extension of the nodes) are chosen so that the
# curve passes through the nodes, $f(k) = v_k$. The map $v \mapsto f(s)$ is linear in $v$,
# so for a list of positions $s_1..s_H$ there is a matrix $M \in \mathbb R^{H \times 3}$ with
# $f(s_i) = (M v)_i$. Its column $j$ is the spline through the unit vector $e_j$.
#
# In two dimensions the bicubic spline is the tensor product of two 1-D splines, so it is
# separable: with $C \in \mathbb R^{3\times3}$ the node values of one displacement component,
#
# $$
# D = M_y\, C\, M_x^{\top} \qquad (H \times 3)(3 \times 3)(3 \times W) = (H \times W).
# $$
#
# Two small matrix products per component instead of a spline evaluation at every pixel. Here
# is the package's code, first $M$, then $D$:

# %%
print(T.getsource(cubic_spline_matrix))
print(T.getsource(elastic_displacement))

# %% [markdown]
# Two checks of that derivation, on an odd side $H = W$ (so that the middle node falls on a
# pixel, the one at $(H-1)/2$):
#
# * the spline interpolates: at the 9 nodes, $D$ equals the drawn displacements, to within
#   **1e-10 px**;
# * the separable product equals `scipy.ndimage.map_coordinates(C, ..., order=3,
#   mode="mirror")` evaluated at every pixel directly, to within **1e-10 px**.

# %%
n = SIZE + 1  # odd
D = elastic_displacement(t.coarse, (n, n))  # (2, n, n)
nodes = D[:, :: (n - 1) // 2, :: (n - 1) // 2]  # (2, 3, 3): rows/cols 0, (n-1)/2, n-1
err_nodes = np.abs(nodes - t.coarse).max()
s = np.linspace(0, 2, n)
S, U = np.meshgrid(s, s, indexing="ij")
direct = np.stack([ndimage.map_coordinates(t.coarse[c], [S, U], order=3, mode="mirror")
                   for c in range(2)])
err_direct = np.abs(direct - D).max()
print(f"max |D(node) - coarse|             = {err_nodes:.2e} px")
print(f"max |M_y C M_x^T - map_coordinates| = {err_direct:.2e} px")
assert err_nodes < 1e-10 and err_direct < 1e-10

# %% [markdown]
# How gentle is such a deformation? A map $p \mapsto p + D(p)$ folds (two pixels land on one
# source point, the image tears) where its Jacobian determinant
# $\det(I + \nabla D)$ drops to 0 or below. Over many random draws the cell below prints the
# largest displacement, the steepest slope $|\partial D_i / \partial x_j|$ and the smallest
# Jacobian determinant. The check asserts that no draw folds: the smallest determinant stays
# above **0**. (The grid spans the tile, so on a smaller tile the same 10 px displacements bend
# more steeply: fast mode's smaller tile prints larger slopes.)

# %%
stats = []
for _ in range(T.pick(300, 60)):
    Dk = elastic_displacement(draw_transform(rng, elastic_only).coarse, (SIZE, SIZE))
    dy, dx = np.gradient(Dk, axis=1), np.gradient(Dk, axis=2)  # (2, H, W) each
    jac = (1 + dy[0]) * (1 + dx[1]) - dx[0] * dy[1]
    stats.append((np.abs(Dk).max(), max(np.abs(dy).max(), np.abs(dx).max()), jac.min()))
stats = np.array(stats)
print(f"{len(stats)} draws at {SIZE}x{SIZE}:")
print(f"  largest displacement   {stats[:, 0].max():6.2f} px (median over draws "
      f"{np.median(stats[:, 0]):.2f} px)")
print(f"  steepest slope         {stats[:, 1].max():6.3f} px/px")
print(f"  smallest Jacobian det  {stats[:, 2].min():6.3f}")
assert stats[:, 2].min() > 0

# %% [markdown]
# ## 3. The coordinate map: where each output pixel reads from
#
# A warp is computed *backwards*: for every pixel $p$ of the output tile we say which
# (fractional) point of the source image it takes its value from, and interpolate there. Going
# backwards leaves no holes in the output, which forward-pushing pixels would. `coordinate_map`
# composes the elastic displacement, the flips and the rotation into one such map. With
# $u = p - \text{tile centre}$,
#
# $$
# \text{source}(p) = \text{center} + R(\alpha)\, F\, \big(u + D(p)\big),
# $$
#
# so the pixel at $p$ shows the image content from $p + D(p)$ (when $R$, $F$ are the identity).
# Composing everything into one map means each array is interpolated only **once** per sample;
# we will see below what a second interpolation would cost.

# %%
print(T.getsource(coordinate_map))

# %%
em = synthetic_em(SIZE, seed=T.seed)
image = em.image.astype(np.float32) / 255.0  # (H, W) in [0, 1]
label = em.label  # (H, W) uint8: 255 = cell, 0 = membrane (ISBI 2012 convention)
centre = ((SIZE - 1) / 2.0, (SIZE - 1) / 2.0)
coords = coordinate_map((SIZE, SIZE), centre, t)  # (2, H, W) source (row, col) per pixel
identity = coordinate_map((SIZE, SIZE), centre, None)  # no transform: source = p
disp = coords - identity  # = D(p) here (no rotation or flip)
print(f"coordinate map {coords.shape}; max |coords - identity - D| = "
      f"{np.abs(disp - elastic_displacement(t.coarse, (SIZE, SIZE))).max():.1e} px")
deformed = warp(image, coords, order=3)
deformed_label = warp(label, coords, order=0)

# %%
step = SIZE // 16
yy, xx = np.mgrid[step // 2 : SIZE : step, step // 2 : SIZE : step]
node = np.linspace(0, SIZE - 1, 3)
NY, NX = np.meshgrid(node, node, indexing="ij")
lines = np.ones((SIZE, SIZE), np.float32)  # a square grid of lines, to see the bending
lines[:: SIZE // 12] = 0
lines[:, :: SIZE // 12] = 0
fig, ax = plt.subplots(2, 2, figsize=(8, 8))
ax[0, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
ax[0, 0].quiver(xx, yy, disp[1][yy, xx], disp[0][yy, xx], color="gold", angles="xy",
                scale_units="xy", scale=0.5, width=0.004)
ax[0, 0].quiver(NX, NY, t.coarse[1], t.coarse[0], color="red", angles="xy", scale_units="xy",
                scale=0.5, width=0.008)
pad = SIZE // 8
ax[0, 0].set_xlim(-pad, SIZE - 1 + pad)
ax[0, 0].set_ylim(SIZE - 1 + pad, -pad)
ax[0, 0].set_title("source; arrows: where output pixels read\n"
                   "(red: 3x3 grid, yellow: bicubic; drawn 2x)", fontsize=9)
ax[0, 1].imshow(warp(lines, coords, order=1), cmap="gray", vmin=0, vmax=1)
ax[0, 1].set_title("a square grid of lines, deformed", fontsize=9)
ax[1, 0].imshow(deformed, cmap="gray", vmin=0, vmax=1)
ax[1, 0].contour(deformed_label > 0, levels=[0.5], colors="cyan", linewidths=0.5)
ax[1, 0].set_title("deformed image with the\ndeformed labels' outlines (cyan)", fontsize=9)
ax[1, 1].imshow(deformed_label, cmap="gray")
ax[1, 1].set_title("deformed labels\n(nearest neighbour: still 0 / 255)", fontsize=9)
for a in ax.ravel():
    a.set_axis_off()
fig.tight_layout()
T.figure(fig, "quiver")
plt.show()

# %% [markdown]
# The yellow arrows are the red ones, smoothly interpolated; where an arrow points right, the
# output pixel shows content from further right, so the image there appears shifted left. The
# grid of straight lines (top right) shows the same map as a bending of space.
# The cyan outlines of the deformed labels lie on the deformed membranes: image and labels went
# through the same map.
#
# ## 4. Interpolation order: images, labels, weights
#
# `warp` samples an array at the map's fractional coordinates with one of three orders:
#
# * **image**, order 3 (cubic spline): smooth, the least blur of the three;
# * **labels**, order 0 (nearest neighbour): a label is a *class*, not a quantity, and there is
#   no class halfway between membrane and cell;
# * **weight map**, order 1 (linear): a convex combination of neighbours, never outside the
#   original range, no spline overshoot.

# %%
print(T.getsource(warp))

# %% [markdown]
# The checks: nearest-neighbour labels contain **no** value outside the original label set; the
# same labels interpolated with cubic splines would contain many (printed); the linearly
# interpolated weight map stays within the original map's range to within float32 rounding
# (**1e-5**), and so does not overshoot, while the cubic one (printed) does.

# %%
label_set = set(np.unique(label).tolist())
cubic_label = warp(label.astype(np.float32), coords, order=3)
off_set = int((~np.isin(np.rint(cubic_label), list(label_set))).sum())
print(f"label set {sorted(label_set)}; nearest-neighbour warp: "
      f"{sorted(np.unique(deformed_label).tolist())}")
print(f"cubic warp of the labels: {off_set} pixels ({off_set / label.size:.1%}) "
      f"round to a value outside the label set")
wmap = weight_map((label > 0).astype(np.int64))  # (H, W) float32, tutorial 03
w_lin = warp(wmap, coords, order=1)
w_cub = warp(wmap, coords, order=3)
print(f"weight map range [{wmap.min():.4f}, {wmap.max():.4f}]; linear warp "
      f"[{w_lin.min():.4f}, {w_lin.max():.4f}]; cubic warp [{w_cub.min():.4f}, "
      f"{w_cub.max():.4f}]")
assert set(np.unique(deformed_label).tolist()) <= label_set
assert off_set > 0
assert w_lin.min() >= wmap.min() - 1e-5 and w_lin.max() <= wmap.max() + 1e-5
assert w_cub.min() < wmap.min() or w_cub.max() > wmap.max()  # the spline overshoots

# %% [markdown]
# Nearest neighbour rounds each source coordinate, so a label boundary can move by up to half a
# pixel relative to the cubic image: harmless next to the 10 px deformations.
#
# **Why one map, one interpolation.** Every interpolation at fractional positions smooths a
# little. Shifting an image by half a pixel and back in two cubic warps is not the identity;
# the cell below prints how far from it the round trip lands (mean absolute error on the
# [0, 1] gray scale, away from the border). The one composed map, shift and shift back, is
# the identity and `warp` reduces it to an exact gather (`is_integral`). The check asserts
# that the composed map gives back the image exactly (error **0**) and the two-step round
# trip does not (error above **1e-3**).

# %%
half = coordinate_map((SIZE, SIZE), (centre[0] + 0.5, centre[1] + 0.5))  # read 0.5 px further
back = coordinate_map((SIZE, SIZE), (centre[0] - 0.5, centre[1] - 0.5))
two_steps = warp(warp(image, half, order=3), back, order=3)
composed = (half - identity) + (back - identity) + identity  # both shifts in one map
once = warp(image, composed, order=0 if is_integral(composed) else 3)
inner = (slice(8, -8), slice(8, -8))
err_two = np.abs(two_steps - image)[inner].mean()
err_once = np.abs(once - image)[inner].max()
print(f"two cubic warps (+0.5 px, -0.5 px): mean |error| {err_two:.4f}")
print(f"one composed map (is_integral: {is_integral(composed)}): max |error| {err_once}")
assert err_once == 0 and err_two > 1e-3

# %% [markdown]
# ## 5. A training tile: everything through one map
#
# `random_tile` cuts one training example: it draws a transform, builds the coordinate map for
# the **input** tile, and samples the image there (cubic), the labels and weight map only on the
# map's central **output** window (nearest and linear), because the unpadded network predicts
# only that window (572 -> 388 in the paper, see tutorial 04). Here with the paper's full
# augmentation: elastic, rotation, flips and gray values.

# %%
print(T.getsource(random_tile).split('"""')[1])  # the docstring

# %%
out = output_size(SIZE)  # the paper network's output side for this input side
classes = (label > 0).astype(np.int64)  # 1 = cell, 0 = membrane
fig, ax = plt.subplots(2, 3, figsize=(8, 5.6))
tile_rng = np.random.default_rng(T.seed)
for row in range(2):
    x, y, w = random_tile(image, classes, wmap, SIZE, out, tile_rng, AugmentConfig())
    m = (SIZE - out) // 2
    ax[row, 0].imshow(x, cmap="gray")
    ax[row, 0].add_patch(plt.Rectangle((m - 0.5, m - 0.5), out, out, fill=False, ec="red"))
    ax[row, 0].set_title(f"input tile {x.shape}\n(red: output window)", fontsize=8)
    ax[row, 1].imshow(y, cmap="gray")
    ax[row, 1].set_title(f"labels {y.shape}\nvalues {np.unique(y).tolist()}", fontsize=8)
    ax[row, 2].imshow(w, cmap="magma")
    ax[row, 2].set_title(f"weight map {w.shape}", fontsize=8)
    assert set(np.unique(y).tolist()) <= {0, 1}
    assert wmap.min() - 1e-5 <= w.min() and w.max() <= wmap.max() + 1e-5
for a in ax.ravel():
    a.set_axis_off()
fig.tight_layout()
T.figure(fig, "tiles")
plt.show()

# %% [markdown]
# Each row is one draw. The label and weight crops are the output window of the input tile,
# deformed with it. The cell also asserted that every tile's labels stay in {0, 1} and its
# weights in the original map's range.
#
# ## Summary
#
# * The paper's elastic deformation is a 3x3 grid of displacement vectors, each component drawn
#   from $\mathcal N(0, 10^2)$ px (`draw_transform`), upsampled to every pixel by the
#   interpolating cubic B-spline, computed separably as $M_y C M_x^\top$
#   (`elastic_displacement`).
# * The deformation is smooth and, as measured above, never folds.
# * A warp is a *backward* map (`coordinate_map`): each output pixel reads from a source point.
#   Elastic, flip and rotation are composed into one map, so every array is interpolated once.
# * Image: cubic; labels: nearest neighbour, so they stay in their label set; weight map:
#   linear, so it stays in its range. All three go through the same map (`random_tile`).
#
# ## Exercises
#
# Each exercise asks for a prediction or a piece of code; its cell ends with a self-check that
# says right, wrong (with a hint) or not attempted yet.
#
# **1. The size of the grid.** The paper's grid is 3x3. Predict, before running: with a 5x5
# grid and the same 10 px standard deviation, do the deformations get gentler or rougher, and
# by what factor does the steepest slope $|\partial D_i / \partial x_j|$ change? Write the
# factor (slope at 5x5 / slope at 3x3) into `my_factor`. Self-check: compared with the slopes
# `steepest` measures over 20 draws, within 25 %. The cell also checks that a 5x5 spline still
# passes through its nodes.

# %%
def steepest(grid, n_draws=20, side=SIZE):
    """The largest |dD/dx| over n_draws deformations on a grid x grid coarse grid."""
    r = np.random.default_rng(T.seed)
    c = AugmentConfig(elastic_grid=grid, rotate=False, flip=False)
    worst = 0.0
    for _ in range(n_draws):
        d = elastic_displacement(draw_transform(r, c).coarse, (side, side))
        worst = max(worst, np.abs(np.gradient(d, axis=(1, 2))).max())
    return worst


my_factor = None  # your prediction: steepest slope at 5x5 / at 3x3

report(check_grid_factor(my_factor, steepest))
coarse = np.random.default_rng(1).normal(0, 10, (2, 5, 5))
d = elastic_displacement(coarse, (161, 161))  # nodes fall on pixels 0, 40, 80, ...
assert np.abs(d[:, ::40, ::40] - coarse).max() < 1e-10  # still interpolating

# %% [markdown]
# **2. Labels through the map.** Write `my_label_warp(lab, coords)`: the labels deformed by the
# coordinate map `coords` (section 3), with `warp` and the interpolation order that labels need.
# Try orders 1 and 3 first and read what the check says. (A network trained on such labels
# would be asked for fractional classes at every membrane edge.) Self-check: every value is a
# label, and the result is the one the map gives.

# %%
def my_label_warp(lab, coords):
    """lab: (H, W) integer labels; coords: (2, H, W) source coordinates. Returns (H, W)."""
    raise NotImplementedError("your turn: warp the labels")


report(check_label_warp(my_label_warp, classes, coords))

# %% [markdown]
# **3. Forward instead of backward.** Someone "pushes" every source pixel to $p + D(p)$
# (rounded) instead of pulling, as `push` below does; a gain multiplies the displacement
# (`push(image, gain * disp)`). Predict, for the gains 0, 0.5 and 2: does the pushed warp leave
# some output pixels with no value at all (holes)? Write `{gain: True or False}` into
# `my_holes`. Self-check: compared with `push` on this tile's displacement. The cell also checks
# that the pulled warp (`warp`) gives every output pixel a value.

# %%
def push(img, disp):
    out = np.full(img.shape, np.nan, np.float32)
    h, w = img.shape
    py, px = np.mgrid[0:h, 0:w]
    ty = np.rint(py + disp[0]).astype(int)
    tx = np.rint(px + disp[1]).astype(int)
    ok = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    out[ty[ok], tx[ok]] = img[py[ok], px[ok]]
    return out


my_holes = None  # your predictions, e.g. {0: ..., 0.5: ..., 2: ...}

report(check_push_holes(my_holes, push, image, disp))
for GAIN in (0.0, 0.5, 2.0):
    assert not np.isnan(warp(image, identity + GAIN * disp, order=3)).any()

# %%
print(f"tutorial 06 ran in {time.perf_counter() - t_start:.1f} s "
      f"({'fast' if T.fast else 'full'} mode)")
