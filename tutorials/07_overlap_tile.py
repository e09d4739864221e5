# %% [markdown]
# # 07. Overlap-tile inference
#
# The U-Net uses only *valid* convolutions, so its output is smaller than its input: 184 px per
# side smaller for the paper's network (572 -> 388, tutorial 04). To segment an image of any
# size the paper uses the **overlap-tile strategy** (Ronneberger et al. 2015, Sec. 2 and
# Fig. 2): the missing context at the image border is filled by mirroring the image, and the
# network runs on overlapping input tiles whose outputs fit together without gaps.
#
# This tutorial shows:
#
# 1. mirror padding, and how much of it is needed;
# 2. where the tiles go (`minunet/models/sizes.py`: `padded_size`, `tile_offsets`, `choose_tile`);
# 3. why every tile must start at a multiple of 16 px, derived from the max-pools and checked;
# 4. that the stitched tiles then equal one pass over the whole image, in float64 to the last
#    bits (a heatmap of |tiled - single pass|), and what an offset off that grid does instead.
#
# **Know first:** tutorial 04 (sizes: why 572 -> 388 and which sizes are valid) and tutorial 02 (the
# 2x2 max-pool).
# **Takes:** about 45 s to run in full, 7 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU; 25
# minutes to read.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

import minunet.inference.tiles
from minunet.data import synthetic_em
from minunet.inference.tiles import mirror_pad, predict, softmax
from minunet.models.sizes import (
    choose_tile,
    grid_step,
    output_size,
    padded_size,
    receptive_field,
    size_margin,
    tile_offsets,
    valid_sizes,
)
from minunet.models.unet import UNetConfig, build_model, standardize
from minunet.ops import maxpool2x2_forward
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_float32_bound,
    check_grid_step,
    check_tile_plan,
    report,
)

T = setup("07_overlap_tile")
t_start = time.perf_counter()
H = T.pick(512, 200)  # the image side: ISBI 2012 slices are 512 x 512
TILE = T.pick(316, 236)  # the input tile side (316: the CPU preset's training tile)
BASE = T.pick(16, 4)  # channels at level 0 (paper: 64); small so that it runs on a CPU
print(f"image {H} x {H}, tiles of {TILE}, network base {BASE}")

# %% [markdown]
# ## 1. Mirror padding
#
# An output pixel of the unpadded network needs 92 px of input context on every side (the
# margin 184 = input - output; tutorial 04 shows that, because of the pools, some pixels see up
# to 204 px, its receptive field). For the pixels at the image border that
# context is missing; the paper extrapolates it "by mirroring the input image". `mirror_pad`
# reflects about the border pixel without repeating it (NumPy's `reflect`: ... 2 1 | 0 1 2 ...):

# %%
margin = size_margin()  # input side - output side
print(f"size_margin() = {margin}: {margin // 2} px of context on each side; "
      f"receptive_field() = {receptive_field()}")
print(T.getsource(mirror_pad))
row = np.arange(6.0).reshape(1, 6)
print("row      ", row[0])
print("padded 4 ", mirror_pad(row, 0, 0, 4, 4)[0])
print("padded 13", mirror_pad(row, 0, 0, 13, 0)[0], " (longer than the row: back and forth)")

# %% [markdown]
# Two properties make the padded image a good stand-in for the missing context: it contains
# the image unchanged, and around the border pixel it is symmetric, so the border pixel sees
# the same kind of structure on both sides. The check asserts both exactly (difference **0**):

# %%
em = synthetic_em(H, seed=T.seed)
image = em.image.astype(np.float64) / 255.0  # (H, W) in [0, 1]
m2 = margin // 2
P = padded_size(H)  # the padded side, a valid network input (see below)
padded = mirror_pad(image, m2, P - H - m2, m2, P - H - m2)  # (P, P)
inside = np.abs(padded[m2 : m2 + H, m2 : m2 + H] - image).max()
k = np.arange(1, m2 + 1)
symmetric = np.abs(padded[m2 - k] - padded[m2 + k]).max()  # rows above vs below the first row
print(f"padded {padded.shape}; max |inside - image| = {inside}; "
      f"max |row m2-k - row m2+k| = {symmetric}")
assert inside == 0 and symmetric == 0

# %% [markdown]
# ## 2. Where the tiles go
#
# The whole padded image must be a **valid** input size (every max-pool needs an even size;
# at depth 4 the valid sides are $124 + 16b$, tutorial 04), and its output must cover the
# $H$ image pixels. `padded_size` finds the smallest such side:
# $P \ge H + 184$, valid. The padding is 92 px on the top and left; the bottom and right get
# the rest, so the output covers a few pixels more than the image, which are cut off.
#
# The tiles have a valid side too (`choose_tile`: the whole axis if it fits, else the largest
# valid side not above the requested one). `tile_offsets` lays them out along each axis: the
# step is the largest multiple of 16 not above the tile's output side, and the last tile ends
# flush with the padded image.

# %%
print(T.getsource(padded_size))
print(T.getsource(tile_offsets))
print(T.getsource(choose_tile))

# %%
th, tw = choose_tile((P, P), 4, TILE)
offsets = tile_offsets(P, th)
out_tile = output_size(th)
print(f"image {H} -> padded {P} (valid: {P in valid_sizes(P, P)}), output {output_size(P)}")
print(f"tile {th} -> output {out_tile}; offsets along each axis: {offsets}")
print(f"{len(offsets) ** 2} tiles; steps {np.diff(offsets).tolist()} (all multiples of "
      f"{grid_step()}: {all(o % grid_step() == 0 for o in offsets)})")

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 4.8))
ax[0].imshow(padded, cmap="gray", vmin=0, vmax=1)
ax[0].add_patch(plt.Rectangle((m2 - 0.5, m2 - 0.5), H, H, fill=False, ec="cyan", lw=1.5))
colours = plt.cm.tab10(np.arange(10))
for a in ax:
    a.set_xlim(-0.5, P - 0.5)
    a.set_ylim(P - 0.5, -0.5)
for n, (y, x) in enumerate([(y, x) for y in offsets for x in offsets]):
    c = colours[n % 10]
    if y == offsets[0]:  # input windows of the first row of tiles, to keep it readable
        ax[0].add_patch(plt.Rectangle((x - 0.5, y - 0.5), tw, th, fill=False, ec=c, lw=2))
    ax[1].add_patch(plt.Rectangle((x + m2 - 0.5, y + m2 - 0.5), out_tile, out_tile,
                                  fc=c, alpha=0.35, ec=c))
ax[1].add_patch(plt.Rectangle((m2 - 0.5, m2 - 0.5), H, H, fill=False, ec="k", lw=1.5))
ax[1].set_title("output windows of all tiles (overlaps darker);\nblack: the image", fontsize=9)
ax[0].set_title("padded image (cyan: the image), input windows\nof the first row of tiles",
                fontsize=9)
fig.tight_layout()
T.figure(fig, "tiles")
plt.show()

# %% [markdown]
# The outputs overlap where a step is shorter than the output side; overlapping outputs agree
# (section 4), so nothing needs to be blended: each output pixel can be taken from any one tile
# that computed it.
# The check: for many image sizes and tile sizes, every offset is a multiple of 16 and the
# output windows cover the whole output without a gap (uncovered pixels: **0**).

# %%
gaps, off_grid, cases = 0, 0, 0
for h in range(1, 700, 7):
    p = padded_size(h)
    for tile in valid_sizes(204, 572):
        t_side = choose_tile((p, p), 4, tile)[0]
        offs = tile_offsets(p, t_side)
        covered = np.zeros(output_size(p), bool)
        for o in offs:
            covered[o : o + output_size(t_side)] = True
        gaps += int((~covered).sum())
        off_grid += sum(o % 16 != 0 for o in offs)
        cases += 1
print(f"{cases} (image, tile) pairs: {gaps} uncovered output pixels, {off_grid} offsets "
      f"off the 16-px grid")
assert gaps == 0 and off_grid == 0

# %% [markdown]
# ## 3. Why the offsets must be multiples of 16
#
# Convolutions are translation-equivariant: shift the input by $t$, the output shifts by $t$.
# A valid convolution keeps indices aligned: output pixel $j$ of a tile cut at offset $t$ is
# output pixel $t + j$ of the whole-image pass. The same holds for the up-convolutions and for
# the skips' centre crops (their offset is a constant of the architecture, the same for every
# valid size). **Max-pooling is not** translation-equivariant. A 2x2, stride-2 pool pairs
# the pixels $(2i, 2i+1)$. In the tile, its pixel pair $(2j, 2j+1)$ is the global pair
#
# $$
# (t + 2j,\; t + 2j + 1),
# $$
#
# which is one of the whole image's pairs $(2i, 2i+1)$ only if $t$ is even; then tile pixel
# $j$ after the pool is global pixel $t/2 + j$. The next pool needs $t/2$ even, and so on:
# after $d$ pools the tile computes the whole image's numbers only if
#
# $$
# t \equiv 0 \pmod{2^d}, \qquad 2^4 = 16 \text{ for the paper's depth 4.}
# $$
#
# Since two valid sizes differ by a multiple of 16 as well ($124 + 16b$), the last tile, flush
# with the end of a valid padded image, is on the grid too. The package states this once:

# %%
print(T.getsource(grid_step))
tiles_doc = minunet.inference.tiles.__doc__
exactness = next(p for p in tiles_doc.split("\n\n") if p.startswith("Exactness"))
print(exactness)  # the paragraph of minunet/inference/tiles.py's docstring that states it

# %% [markdown]
# A check of the derivation with the package's max-pool alone: pool a random image four times,
# and pool a crop of it that starts at offset $t$ four times. At $t \equiv 0 \pmod{16}$ the
# crop's result is exactly a piece of the whole image's (difference **0**); at every other
# offset in $1..31$ it is not (difference above **0**).

# %%
def pool4(a):
    for _ in range(4):
        a, _ = maxpool2x2_forward(a)
    return a


rng = np.random.default_rng(T.seed)
L = 64
big = rng.standard_normal((1, 1, 160, 160))
whole = pool4(big)
diffs = []
for t in range(33):
    crop = pool4(big[:, :, t : t + L, t : t + L])  # (1, 1, L/16, L/16)
    ref = whole[:, :, t // 16 : t // 16 + L // 16, t // 16 : t // 16 + L // 16]
    diffs.append(float(np.abs(crop - ref).max()))
for lo, hi in ((0, 17), (17, 33)):
    print("t    " + " ".join(f"{t:4d}" for t in range(lo, hi)))
    print("diff " + " ".join(f"{d:4.1f}" for d in diffs[lo:hi]))
assert all((d == 0) == (t % 16 == 0) for t, d in enumerate(diffs))

# %% [markdown]
# ## 4. The whole network: tiled = one pass
#
# Now the real thing, an (untrained: exactness does not depend on the weights) U-Net of depth 4
# in float64. The single pass runs the network once on the whole padded image; `predict` runs
# it tile by tile and stitches. Inference uses `model.eval()` (no dropout; `predict` switches
# to it by itself). Both sides are standardised the same way (`standardize`, the network's input
# scale).
#
# The two probability maps cannot be equal bit for bit in general: the matrix products of a
# tile and of the whole image have different shapes, and BLAS may add the same terms in
# another order. Float64 rounding is about $10^{-16}$ per operation, so the check asserts
# **max |tiled - single| < 1e-12**, the bound `tests/test_infer.py` uses.

# %%
model = build_model(UNetConfig(base=BASE, dtype="float64"), seed=T.seed)
model.eval()
x = mirror_pad(standardize(image), m2, P - H - m2, m2, P - H - m2)[None, None]  # (1, 1, P, P)
t0 = time.perf_counter()
single_all = softmax(model.forward(x))  # (1, 2, P - 184, P - 184)
model.release_caches()
t_single = time.perf_counter() - t0
single = single_all[0, :, :H, :H]  # (2, H, W): the image's pixels
t0 = time.perf_counter()
tiled = predict(model, image, tile=TILE)  # (2, H, W)
t_tiled = time.perf_counter() - t0
diff = np.abs(tiled - single)
print(f"single pass on {P} x {P}: {t_single:.1f} s; tiled (tiles of {th}): {t_tiled:.1f} s")
print(f"max |tiled - single| = {diff.max():.2e}  (float64)")
assert diff.max() < 1e-12

# %% [markdown]
# ### What a misaligned offset would do
#
# Take the same tiles but step them 8 px shorter, so that the offsets are multiples of 8 but
# not all of 16. The cell stitches them by hand, the simplest way (a later tile overwrites the
# overlap), remembers for every output pixel whether the tile that wrote it last started on the
# 16-px grid along both axes, and compares with the single pass. The bounds: where a tile off
# the grid wrote, the stitch differs from the single pass by more than **1e-3** (not a rounding
# effect); where a tile on the grid wrote, it agrees to **1e-12**.

# %%
bad_step = np.diff(offsets)[0] - 8
bad_offsets = list(range(0, P - th, bad_step)) + [P - th]
stitched = np.zeros_like(single_all)
on_grid = np.zeros(single_all.shape[2:], bool)  # did a tile on the grid write this pixel last?
for y in bad_offsets:
    for x0 in bad_offsets:
        p = softmax(model.forward(x[:, :, y : y + th, x0 : x0 + tw]))  # (1, 2, out, out)
        model.release_caches()
        stitched[:, :, y : y + out_tile, x0 : x0 + out_tile] = p
        on_grid[y : y + out_tile, x0 : x0 + out_tile] = y % 16 == 0 and x0 % 16 == 0
bad = np.abs(stitched - single_all)[0, :, :H, :H]
on_grid = on_grid[:H, :H]
print(f"misaligned offsets {bad_offsets} (on the grid: "
      f"{[o for o in bad_offsets if o % 16 == 0]})")
print(f"max |misaligned - single| where a tile off the grid wrote: {bad[:, ~on_grid].max():.3f}; "
      f"where a tile on the grid wrote: {bad[:, on_grid].max():.2e}")
assert bad[:, ~on_grid].max() > 1e-3 and bad[:, on_grid].max() < 1e-12

# %%
floor = 1e-17  # zeros drawn at the bottom of the log scale
log_odds = np.log(tiled[1] / tiled[0])
fig, ax = plt.subplots(1, 3, figsize=(10, 3.5), gridspec_kw={"width_ratios": [1, 1, 1.25]})
ax[0].imshow(log_odds, cmap="viridis", vmin=np.percentile(log_odds, 2),
             vmax=np.percentile(log_odds, 98))
ax[0].set_title("tiled log-odds of 'cell'\n(untrained network)", fontsize=9)
norm = LogNorm(floor, 1)
ax[1].imshow(np.maximum(diff[1], floor), norm=norm, cmap="magma")
ax[1].set_title(f"|tiled - single|, on the grid\nmax {diff.max():.1e}", fontsize=9)
im = ax[2].imshow(np.maximum(bad[1], floor), norm=norm, cmap="magma")
ax[2].set_title(f"|misaligned - single|, step {bad_step}\nmax {bad.max():.2f}", fontsize=9)
for a in ax:
    a.set_axis_off()
fig.colorbar(im, ax=ax[2], shrink=0.85)
T.figure(fig, "heatmaps")
plt.show()

# %% [markdown]
# Left: what an untrained network outputs, as log-odds $\log(p_\text{cell}/p_\text{membrane})$:
# it reacts to the image's structures, but it is no segmentation yet (that is tutorial 05's
# job). Middle: the difference between the tiled and the single pass is at the
# level of float64 rounding everywhere (black where it is exactly 0). Right: with offsets off
# the grid, the tiles that start off it compute different numbers everywhere in their output,
# not only at their edges: every max-pool in them pairs up different pixels. The squares
# written by tiles that happen to start on the grid along both axes stay exact (black).
#
# One more question a reader may have: how different are the misaligned numbers per offset?
# Each row below runs one tile at offset $t$ along both axes and compares it with the single
# pass: the error vanishes only at multiples of 16 (the same rule as the max-pool check, now on
# the whole network). The check asserts that split, with the bound 1e-12.

# %%
for t in (0, 1, 2, 4, 8, 16, 24, 32):
    p = softmax(model.forward(x[:, :, t : t + th, t : t + tw]))
    model.release_caches()
    e = np.abs(p - single_all[:, :, t : t + out_tile, t : t + out_tile]).max()
    print(f"offset {t:2d}: max |tile - single| = {e:.2e}")
    assert (e < 1e-12) == (t % 16 == 0)

# %% [markdown]
# ## Summary
#
# * The unpadded U-Net loses 92 px of context per side; the paper mirrors the image to supply
#   it (`mirror_pad`, NumPy's `reflect`).
# * The padded image is a valid size (`padded_size`); valid tiles (`choose_tile`) are stepped by
#   the largest multiple of 16 that fits their output, the last one flush with the end
#   (`tile_offsets`).
# * Convolutions are translation-equivariant, max-pools only on their own grid: after four
#   pools, a tile reproduces the whole-image pass only at offsets that are multiples of
#   $2^4 = 16$. On that grid the stitch is exact (float64 rounding); off it, the tiles compute
#   other numbers.
# * The tile size therefore changes only speed and memory, never the result.
#
# ## Exercises
#
# **1. Another tile size.** `MY_TILE` below is an invalid size, 310 (`predict` rounds it down to
# a valid side); try others too (see `valid_sizes(204, 572)`). Before running, work out by hand
# (sections 2 and 3) the tile side that `predict` uses for the padded side `P` and the tiles'
# offsets along each axis, and write them into `my_side, my_offsets`. Self-check: compared
# with `choose_tile` and `tile_offsets`. The cell then checks that the result still equals the
# single pass to 1e-12.

# %%
MY_TILE = 310
my_side, my_offsets = None, None  # your answers: a side and a list of offsets

report(check_tile_plan(my_side, my_offsets, MY_TILE, P))
mine = predict(model, image, tile=MY_TILE)
assert np.abs(mine - single).max() < 1e-12

# %% [markdown]
# **2. Depth and grid.** For a network of depth `D` = 3 (try 2 and 5 too), what must the tile
# offsets be multiples of? Write your answer into `MY_GRID`. Self-check: compared with
# `grid_step(D)`; when right, the check repeats the max-pool experiment of section 3 with `D`
# pools and says at which offsets a pooled crop equals the whole image's pooling.

# %%
D = 3
MY_GRID = None  # your answer for depth D

report(check_grid_step(MY_GRID, D))

# %% [markdown]
# **3. Float32.** Training and the `predict` CLI run in float32. The cell builds the same
# network in float32 (`UNetConfig(base=BASE, dtype="float32")`, same seed) and computes its
# tiled and single-pass maps. What bound on their largest difference would you assert now?
# Write it into `my_bound`. Self-check: the float32 maps must stay under it (float32 rounds at
# about $6 \cdot 10^{-8}$ per operation, and the errors of many layers add up), and it must stay
# at least ten times below the error of a real mistake (tiles off the pooling grid differ by
# more than $10^{-3}$, section 3), so that it would still catch one.

# %%
m32 = build_model(UNetConfig(base=BASE, dtype="float32"), seed=T.seed)
m32.eval()
s32 = softmax(m32.forward(x.astype(np.float32)))[0, :, :H, :H]
m32.release_caches()
t32 = predict(m32, image, tile=TILE)
my_bound = None  # your bound on max |t32 - s32|

report(check_float32_bound(my_bound, t32, s32))

# %%
print(f"tutorial 07 ran in {time.perf_counter() - t_start:.1f} s "
      f"({'fast' if T.fast else 'full'} mode)")
