# %% [markdown]
# # 09. Evaluating like the ISBI challenge
#
# The U-Net paper's first result is the ISBI 2012 challenge on segmenting neuronal membranes in
# electron microscopy. The challenge ranked entries by how well the *cells* they segment agree
# with the truth, not by how many pixels they get right, because one missing pixel in a
# membrane merges two cells, and that error matters far more than a membrane drawn a little too
# thick. This tutorial computes the challenge's scores as its evaluation code (Fiji's
# `RandError` and `VariationOfInformation`) computes them, with `minunet/evaluation/metrics.py`:
#
# * **pixel error**: 1 - the best F1 of the cell pixels;
# * **Rand error**: 1 - the best foreground-restricted Rand F-score of the cells, no thinning
#   (the 2012 ranking score, and the one the paper reports);
# * **V_rand** and **V_info**: the Rand F-score and its information-theoretic cousin after the
#   proposal's boundaries have been thinned to one pixel (the ranking scores since 2013).
#
# On toy segmentations with one error each (a shifted boundary, a split cell, a merge through a
# 2-pixel gap, a thick boundary, specks) it shows what each score punishes and what it forgives;
# then the formulas, checked against a brute-force count over pixel pairs; the thinning; the
# thresholds; and, when you give the data, a real ISBI slice.
#
# **Know first:** NumPy; what a connected component is. No tutorial before this one is needed.
# **Takes:** about 15 s to run in full, 5 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU; 25
# minutes to read.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage

import minunet.evaluation.metrics
from minunet.data import read_array, synthetic_em
from minunet.evaluation.metrics import (
    THRESHOLDS,
    info_scores,
    isbi_scores,
    rand_scores,
    segments,
    slice_counts,
    thin_boundaries,
)
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_rand_counts,
    check_smallest_gap,
    check_thinned_truth,
    report,
)

T = setup("09_isbi_metrics")
t_start = time.perf_counter()
rng = np.random.default_rng(T.seed)

# %% [markdown]
# ## 1. The conventions
#
# A proposal is a map of **cell probabilities** (1 = cell, 0 = membrane), the challenge's
# submission format; the truth is binary (True, or 255 in the ISBI label files, = cell). The
# proposal is binarised at each threshold $t$ in 0.0, 0.1, ..., 1.0 as `prob > t`, and each
# score is the best one over the thresholds. The *cells* of a binary map are its 4-connected
# components of cell pixels (`segments`); the membrane pixels between them belong to no cell.

# %%
metrics_doc = minunet.evaluation.metrics.__doc__
print(metrics_doc[: metrics_doc.index("Foreground-restricted scoring")])

# %% [markdown]
# ## 2. Six toy proposals, one error each
#
# The truth: a 3 x 3 grid of square cells, separated by 3-pixel membranes. Each proposal makes
# exactly one kind of mistake:
#
# | proposal | what is wrong |
# |---|---|
# | shifted | every membrane drawn 1 px lower |
# | split | a 1-px membrane line cuts one cell in two |
# | merge | a 2-px gap in one membrane joins two cells |
# | thick | membranes 7 px instead of 3 |
# | specks | 2% of the pixels randomly marked membrane |
# | thin | membranes 1 px instead of 3, along their middle |

# %%
N = 96  # toy side


def grid_truth(width, n=N):
    """3 x 3 square cells separated by membranes `width` px wide (True = cell)."""
    cell = np.ones((n, n), bool)
    for c in (n // 3, 2 * n // 3):
        cell[c - width // 2 : c - width // 2 + width, :] = False
        cell[:, c - width // 2 : c - width // 2 + width] = False
    cell[[0, -1], :] = cell[:, [0, -1]] = False  # a membrane around the field
    return cell


truth = grid_truth(3)
cases = {"perfect": truth.copy(), "shifted": np.roll(truth, 1, axis=0)}
split = truth.copy()
split[N // 6, 1 : N // 3 - 1] = False  # a line through the top-left cell
cases["split"] = split
merge = truth.copy()
merge[N // 3 - 1 : N // 3 + 2, N // 6 : N // 6 + 2] = True  # a 2-px hole in one membrane
cases["merge"] = merge
cases["thick"] = grid_truth(7)
specks = truth.copy()
specks[rng.random((N, N)) < 0.02] = False
cases["specks"] = specks
cases["thin"] = grid_truth(1)

results = {name: isbi_scores(p.astype(np.float64), truth) for name, p in cases.items()}
print(f"{'proposal':10s} {'pixel error':>11s} {'Rand error':>11s} {'V_rand':>8s} {'V_info':>8s}")
for name, r in results.items():
    print(f"{name:10s} {r.pixel_error:11.4f} {r.rand_error:11.4f} {r.v_rand:8.4f} "
          f"{r.v_info:8.4f}")

# %%
def error_rgb(pred, truth):
    """White: cell in both; black: membrane in both; red: membrane only in the proposal;
    blue: cell only in the proposal (a missed membrane)."""
    rgb = np.zeros(pred.shape + (3,))
    rgb[pred & truth] = 1
    rgb[~pred & truth] = (0.9, 0.1, 0.1)
    rgb[pred & ~truth] = (0.1, 0.3, 1.0)
    return rgb


fig, ax = plt.subplots(2, 4, figsize=(10, 5.6))
ax = ax.ravel()
ax[0].imshow(truth, cmap="gray")
ax[0].set_title("truth", fontsize=9)
for a, (name, p) in zip(ax[1:7], list(cases.items())[1:], strict=True):
    r = results[name]
    a.imshow(error_rgb(p, truth))
    a.set_title(f"{name}: pixel {r.pixel_error:.4f}, Rand {r.rand_error:.3f}\n"
                f"V_rand {r.v_rand:.3f}, V_info {r.v_info:.3f}", fontsize=8)
ax[7].text(0, 0.5, "white: cell in both\nblack: membrane in both\nred: membrane only in\n"
           "  the proposal\nblue: cell only in the\n  proposal (a missed\n  membrane)",
           fontsize=9, va="center")
for a in ax:
    a.set_axis_off()
fig.tight_layout()
T.figure(fig, "toy_cases")
plt.show()

# %% [markdown]
# Red: membrane where the truth has cell. Blue: cell where the truth has membrane. Read the table
# column by column:
#
# * **Pixel error** counts pixels. The merge changes only the few pixels of its gap and gets the
#   smallest pixel error of all the mistakes, though it destroys the boundary between two cells;
#   the thick and shifted membranes, harmless for the cells, get the largest.
# * **Rand error** (no thinning) compares cells, counting every proposed membrane pixel inside a
#   true cell as a cell of its own. It sees the merge, but it also punishes thick and shifted
#   membranes, whose extra pixels sit inside true cells. A membrane drawn *thinner* than the
#   truth costs pixel error but no Rand error at all: the truth's membrane pixels do not count.
# * **V_rand** and **V_info** thin the proposal's membranes first (section 4): thick, shifted,
#   thin and speckled membranes all thin to the right cells and score a perfect 1. What is left
#   are the real errors of the cells: the split and the merge. V_info weighs them differently
#   from V_rand (it is a different measure of agreement); both rank the merge as the worse error
#   here.
#
# The check asserts what the prose just claimed, as inequalities between the printed numbers:
# the merge has the smallest pixel error of the mistakes and a larger Rand error than the split;
# the thin membranes have a pixel error above 0 and a Rand error of exactly 0; V_rand and V_info
# are exactly 1 for shifted, thick, specks and thin, and below 1 for the split and the merge.

# %%
mistakes = [n for n in cases if n != "perfect"]
pix = {n: results[n].pixel_error for n in mistakes}
assert min(pix, key=pix.get) == "merge"
assert results["merge"].rand_error > results["split"].rand_error
assert results["thin"].rand_error == 0 and results["thin"].pixel_error > 0
for n in ("shifted", "thick", "specks", "thin"):
    assert results[n].v_rand == 1.0 and results[n].v_info == 1.0, n
for n in ("split", "merge"):
    assert results[n].v_rand < 1.0 and results[n].v_info < 1.0, n
print("the claims about the table hold")

# %% [markdown]
# ## 3. The formulas
#
# Both scores count how the truth's cells and the proposal's cells overlap, **only over the
# truth's cell pixels** ("foreground-restricted": the truth's membrane pixels do not count at
# all). Let $n_{ij}$ be the number of pixels in true cell $i$ and proposed cell $j$; a proposed
# membrane pixel inside a true cell is a cell of one pixel (a *singleton*), $n_0$ of them in
# all. With $t_i = \sum_j n_{ij}$ the sizes of the true cells (singletons included) and
# $s_j = \sum_i n_{ij}$ those of the proposed cells:
#
# **Rand.** Count ordered pairs of pixels (a pixel paired with itself included) that lie in one
# cell: in both segmentations $A$, in the truth $T$, in the proposal $S$:
#
# $$
# A = \sum_{ij} n_{ij}^2 + n_0, \qquad T = \sum_i t_i^2, \qquad S = \sum_j s_j^2 + n_0,
# $$
#
# $$
# \text{split score} = \frac{A}{T}, \qquad \text{merge score} = \frac{A}{S}, \qquad
# F_\text{Rand} = \frac{2A}{T + S}.
# $$
#
# A split separates pairs that belong together (smaller $A$, same $T$: the split score drops);
# a merge joins pairs that do not ($S$ grows: the merge score drops).
#
# **Information.** With $p_{ij} = n_{ij}/n$, $n = \sum_i t_i$, the entropies $H(T)$, $H(S)$ of
# the two partitions, their joint entropy $H(S, T)$ and the mutual information
# $I = H(S) + H(T) - H(S, T)$:
#
# $$
# \text{split} = \frac{I}{H(S)}, \qquad \text{merge} = \frac{I}{H(T)}, \qquad
# F_\text{info} = \frac{2I}{H(S) + H(T)}.
# $$
#
# The Rand error of the challenge is $1 - \max_t F_\text{Rand}$ on the unthinned proposal;
# V_rand and V_info are $\max_t F$ after thinning. The package's code for these formulas:

# %%
source = T.getsource(minunet.evaluation.metrics)
start = source.index("class Scores(NamedTuple)")
print(source[start : source.index("# ---", start)])

# %% [markdown]
# A check against the definitions, without any of that code: on a small random pair of
# segmentations (with proposed membrane pixels inside true cells, so singletons occur), count
# all ordered pixel pairs for Rand, and compute the entropies with each singleton made its own
# label for the information scores. Both must agree with `rand_scores` and `info_scores` to
# **1e-12**.

# %%
def random_segmentation(shape, n_cells, membrane, r):
    """Voronoi cells of random seeds, with a random `membrane` fraction of pixels set to 0."""
    seeds = np.zeros(shape, np.int32)
    seeds[r.integers(0, shape[0], n_cells), r.integers(0, shape[1], n_cells)] = np.arange(
        1, n_cells + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    seg = seeds[iy, ix]
    seg[r.random(shape) < membrane] = 0
    return seg


t_seg = random_segmentation((14, 13), 5, 0.15, rng)
p_seg = random_segmentation((14, 13), 4, 0.25, rng)
fg = t_seg > 0
tt, pp = t_seg[fg], p_seg[fg]  # only the truth's cell pixels count
same_t = tt[:, None] == tt[None, :]
same_p = ((pp[:, None] == pp[None, :]) & (pp[:, None] > 0)) | np.eye(pp.size, dtype=bool)
A, T_, S = (same_t & same_p).sum(), same_t.sum(), same_p.sum()
rand_brute = (A / T_, A / S, 2 * A / (T_ + S))
singles = np.where(pp > 0, pp, pp.max() + 1 + np.arange(pp.size))  # each singleton: own label


def entropy(labels):
    q = np.unique(labels, return_counts=True)[1] / labels.size
    return -(q * np.log(q)).sum()


h_t, h_s = entropy(tt), entropy(singles)
mutual = h_t + h_s - entropy(tt * (singles.max() + 1) + singles)
info_brute = (mutual / h_s, mutual / h_t, 2 * mutual / (h_s + h_t))
err_rand = np.abs(np.array(rand_brute) - np.array(rand_scores(t_seg, p_seg))).max()
err_info = np.abs(np.array(info_brute) - np.array(info_scores(t_seg, p_seg))).max()
print(f"{pp.size} truth cell pixels, {int((pp == 0).sum())} singletons")
print(f"Rand (split, merge, F): pairs {np.round(rand_brute, 6)}, package "
      f"{np.round(rand_scores(t_seg, p_seg), 6)}; max diff {err_rand:.1e}")
print(f"info (split, merge, F): brute {np.round(info_brute, 6)}, package "
      f"{np.round(info_scores(t_seg, p_seg), 6)}; max diff {err_info:.1e}")
assert err_rand < 1e-12 and err_info < 1e-12

# %% [markdown]
# Back to the toys: with the split and merge scores apart, the split proposal loses on the
# **split** score and keeps a perfect merge score; the merge proposal the other way round. The
# check asserts exactly that (a score of exactly 1 where no error of that kind was made). Here
# on the thinned proposals, as V_rand and V_info see them:

# %%
truth_seg = segments(truth)
for name in ("split", "merge"):
    thinned = thin_boundaries(cases[name])
    r, i = rand_scores(truth_seg, thinned), info_scores(truth_seg, thinned)
    print(f"{name:6s} Rand split {r.split:.4f} merge {r.merge:.4f} | "
          f"info split {i.split:.4f} merge {i.merge:.4f}")
r_s, i_s = rand_scores(truth_seg, thin_boundaries(split)), info_scores(truth_seg,
                                                                       thin_boundaries(split))
r_m, i_m = rand_scores(truth_seg, thin_boundaries(merge)), info_scores(truth_seg,
                                                                       thin_boundaries(merge))
assert r_s.merge == 1 and i_s.merge == 1 and r_s.split < 1 and i_s.split < 1
assert r_m.split == 1 and i_m.split == 1 and r_m.merge < 1 and i_m.merge < 1

# %% [markdown]
# ## 4. Thinning the proposal (never the truth)
#
# Before V_rand and V_info, the challenge thins the proposal's membranes with a flat watershed
# (Fiji's `WatershedTransform2D`, 4-connected): the proposal's cells are flooded outwards into
# their membrane, breadth-first, and where two floods meet a one-pixel dam remains. A membrane
# of any thickness becomes a line of one pixel between the cells it separates; a speck inside a
# cell is flooded by that cell and disappears. The truth is not thinned: its membrane pixels
# simply do not count.

# %%
print(T.getsource(thin_boundaries))

# %%
fig, ax = plt.subplots(1, 4, figsize=(10, 2.9))
for a, name in zip(ax, ("thick", "specks", "split", "merge"), strict=True):
    thinned = thin_boundaries(cases[name])
    a.imshow(thinned, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")  # one colour a cell
    a.imshow(np.ma.masked_where(thinned > 0, thinned), cmap="gray", vmin=0, vmax=1)
    a.set_title(f"{name}, thinned:\n{thinned.max()} cells (truth: {truth_seg.max()})",
                fontsize=9)
    a.set_axis_off()
fig.tight_layout()
T.figure(fig, "thinned")
plt.show()

# %% [markdown]
# Thinning keeps the number of cells (printed in the titles) and only moves where the membranes
# lie. The check: the thinned thick proposal has the truth's **nine** cells, and its dams are one
# pixel wide: no 2 x 2 block of dam pixels anywhere (a dam two pixels wide would contain one),
# and a row through the top cells crosses exactly **2** dam pixels, one per vertical membrane.
# (The field's border is no dam: it touches only one cell, which floods it.)

# %%
thick_thin = thin_boundaries(cases["thick"])
dam = thick_thin == 0
blocks = int((dam[:-1, :-1] & dam[1:, :-1] & dam[:-1, 1:] & dam[1:, 1:]).sum())
crossed = int(dam[N // 6].sum())
print(f"cells after thinning: {thick_thin.max()}; 2x2 blocks of dam pixels: {blocks}; dam "
      f"pixels in row {N // 6}: {crossed}")
assert thick_thin.max() == truth_seg.max() == 9 and blocks == 0 and crossed == 2

# %% [markdown]
# ## 5. Thresholds
#
# A real network gives probabilities, not a binary map. Each score picks its own best threshold
# from 0.0, 0.1, ..., 1.0. Below, a soft proposal made from the truth of a synthetic EM slice:
# blurred, with noise and with a few membrane pieces faded (which, at a high enough threshold,
# are still membrane, and at a low one become merges). `slice_counts` holds the per-threshold
# counts; the figure shows each F-score against the threshold, with the best one marked.

# %%
side = T.pick(512, 160)
em = synthetic_em(side, seed=T.seed)
em_truth = em.label > 0  # True = cell
soft = ndimage.gaussian_filter(em_truth.astype(np.float64), 1.5)
soft += 0.15 * rng.standard_normal(soft.shape)
fade = ndimage.binary_dilation(rng.random(soft.shape) < 0.0005, iterations=4) & ~em_truth
soft[fade] = 0.5 + 0.3 * soft[fade]  # faded membrane: about 0.5 .. 0.8
soft = np.clip(soft, 0, 1)
counts = slice_counts(soft, em_truth)
tp, fp, fn = counts.pixel.T
pixel_f1 = 2 * tp / (2 * tp + fp + fn)
a_, t_, s_ = counts.rand.T
rand_f = 2 * a_ / (t_ + s_)
vr = [s.fscore for s in counts.v_rand]
vi = [s.fscore for s in counts.v_info]
best = isbi_scores(soft, em_truth)
print(f"thresholds {list(THRESHOLDS)}")
for name, f in (("pixel F1", pixel_f1), ("Rand F", rand_f), ("V_rand", vr), ("V_info", vi)):
    print(f"  {name:8s} " + " ".join(f"{v:.3f}" for v in f))
print(f"best: pixel error {best.pixel_error:.4f}, Rand error {best.rand_error:.4f}, "
      f"V_rand {best.v_rand:.4f}, V_info {best.v_info:.4f}; at thresholds {best.thresholds}")
assert abs(best.pixel_error - (1 - max(pixel_f1))) < 1e-12
assert abs(best.v_rand - max(vr)) < 1e-12

# %% [markdown]
# The asserts check that the reported scores are the best per-threshold values of the table
# (to 1e-12). Different scores often prefer different thresholds: the pixel F1 is best where
# the blurred membrane is cut in its middle, the cell scores where the faded pieces are still
# counted as membrane.

# %%
fig, ax = plt.subplots(1, 3, figsize=(10, 3.3), gridspec_kw={"width_ratios": [1, 1, 1.6]})
ax[0].imshow(soft, cmap="gray")
ax[0].set_title("soft proposal P(cell)", fontsize=9)
ax[1].imshow(em_truth, cmap="gray")
ax[1].set_title("truth", fontsize=9)
for name, f in (("pixel F1", pixel_f1), ("Rand F (no thinning)", rand_f), ("V_rand", vr),
                ("V_info", vi)):
    line = ax[2].plot(THRESHOLDS, f, marker=".", label=name)[0]
    k = int(np.argmax(f))
    ax[2].plot(THRESHOLDS[k], f[k], "o", ms=9, mfc="none", color=line.get_color())
ax[2].set_xlabel("threshold t (cell = prob > t)")
ax[2].set_ylabel("F-score")
ax[2].legend(fontsize=8)
ax[0].set_axis_off()
ax[1].set_axis_off()
fig.tight_layout()
T.figure(fig, "thresholds")
plt.show()

# %% [markdown]
# ## 6. A real ISBI 2012 slice
#
# With the ISBI 2012 data (set `MINUNET_ISBI2012` to the folder with `images/` and `labels/`),
# the next cell scores three proposals for slice 25 against its truth: the raw EM image itself
# read as a probability (bright = cell, a baseline that needs no learning), the truth with its
# membranes dilated by 2 px, and the truth with twenty holes of 9 x 9 px punched into its
# membranes.
# Without the data it says so and the tutorial goes on.

# %%
if T.isbi is None:
    print("skipped: no ISBI 2012 data (set MINUNET_ISBI2012 to the folder with images/ and "
          "labels/ to run this cell)")
else:
    lab = read_array(T.isbi / "labels" / "25.png") != 0  # True = cell
    raw = read_array(T.isbi / "images" / "25.png").astype(np.float64) / 255.0
    thick = ~ndimage.binary_dilation(~lab, iterations=2)
    holes = lab.copy()
    membrane = np.argwhere(~lab)
    for y, x in membrane[rng.choice(len(membrane), 20, replace=False)]:
        holes[max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5] = True
    print(f"{'proposal':16s} {'pixel error':>11s} {'Rand error':>11s} {'V_rand':>8s} "
          f"{'V_info':>8s}")
    real = {}
    for name, p in (("raw image", raw), ("thick membranes", thick), ("twenty holes", holes)):
        r = real[name] = isbi_scores(p.astype(np.float64), lab)
        print(f"{name:16s} {r.pixel_error:11.4f} {r.rand_error:11.4f} {r.v_rand:8.4f} "
              f"{r.v_info:8.4f}")
    assert real["twenty holes"].pixel_error < 0.01
    assert real["twenty holes"].rand_error > real["thick membranes"].rand_error
    assert real["twenty holes"].v_rand < real["thick membranes"].v_rand

# %% [markdown]
# With the data, the table repeats the toys' lesson on a real slice (the cell asserts it): the
# punched holes change less than 1% of the pixels but merge cells, which the Rand error and
# V_rand punish far more than membranes two pixels too thick. The raw image, dark on the
# membranes but also on the organelles inside the cells, is poor on every score: the reason a
# network is needed at all.

# %% [markdown]
# ## Summary
#
# * **Pixel error** counts pixels: it punishes membranes that are thick or shifted and hardly
#   notices a gap of two pixels that merges two cells.
# * **Rand error** (the 2012 score, no thinning) compares cells through pairs of pixels:
#   $F = 2A/(T+S)$ over the truth's cell pixels, proposed membrane pixels inside true cells
#   counting as cells of their own. It sees merges and splits, and still punishes thick
#   membranes.
# * **V_rand** and **V_info** thin the proposal's membranes to one pixel first (flat
#   watershed, never on the truth), so they score only the cells: splits lower the split score,
#   merges the merge score, and the F-score combines them.
# * Every score is the best over the thresholds 0.0 .. 1.0 of the probability map, each score
#   with its own threshold.
#
# ## Exercises
#
# **1. How wide must a gap be?** `gap_toy(gap)` opens a hole `gap` pixels wide in one
# membrane of the truth, as the merge toy does with 2. What is the smallest gap at which the
# merge score (Rand, thinned proposal) drops below 1? Predict the pixel error and V_rand at that
# gap too. Write the gap into `my_smallest_gap`. Self-check: compared with the scores of the
# gaps 0 to 5; when right, it prints them, pixel error and V_rand beside the merge score.

# %%
def gap_toy(gap):
    """The truth with a hole `gap` px wide in the membrane below the top-left cell."""
    toy = truth.copy()
    toy[N // 3 - 1 : N // 3 + 2, N // 6 : N // 6 + gap] = True
    return toy


my_smallest_gap = None  # your answer, in pixels

report(check_smallest_gap(my_smallest_gap, gap_toy, truth))

# %% [markdown]
# **2. Thinning the truth too.** The challenge thins only the proposal. Would it change the
# score to thin the truth as well (thin `truth` with `thin_boundaries`, then `rand_scores` on the
# two thinned segmentations)? Predict it for the `thick` and the `shifted` toys, and write
# `{"thick": True or False, "shifted": True or False}` (True: the F-score changes) into
# `my_changes`. Self-check: compared with both ways of scoring; when right, it prints them.

# %%
my_changes = None  # your predictions

report(check_thinned_truth(my_changes, truth, cases))

# %% [markdown]
# **3. Count the pairs yourself.** Write `my_rand_counts(truth_seg, prop)`: $A$, $T$ and $S$ of
# section 3 from the contingency table of a truth segmentation and a proposed one (0 =
# membrane in both): over the truth's cell pixels only, the pairs (true cell, proposed cell)
# (`np.unique` with `axis=1, return_counts=True` counts them), proposed membrane pixels as
# singletons. Self-check: $2A/(T+S)$, $A/T$ and $A/S$ compared with `rand_scores`' F-score, split
# and merge scores on three random toys, to 1e-12.

# %%
def my_rand_counts(truth_seg, prop):
    """truth_seg, prop: (H, W) integer segmentations, 0 = membrane. Returns (A, T, S)."""
    raise NotImplementedError("your turn: count the pairs")


report(check_rand_counts(my_rand_counts))

# %%
print(f"tutorial 09 ran in {time.perf_counter() - t_start:.1f} s "
      f"({'fast' if T.fast else 'full'} mode)")
