# %% [markdown]
# # 10. When the gradient is wrong
#
# Tutorial 00 showed how a gradient check decides whether a backward pass is right. This one is
# about the other case: what wrong backward passes look like, so that a failing row of the
# check tells you *which* mistake you made. It is a gallery of typical mistakes:
#
# * a transposed weight gradient;
# * a col2im that overwrites instead of adding;
# * a ReLU mask taken from the wrong tensor;
# * a max-pool that sends the gradient to every tied maximum;
# * a loss gradient that forgets its normalisation, and a loss normalised wrongly in both
#   directions (which a gradient check cannot see);
# * a crop whose backward puts the gradient back one pixel off.
#
# Each mistake comes with its row of the gradient check (`minunet.nn.gradcheck.check_op`,
# `format_table`), a heatmap of *where* in the gradient the error lives, and a short derivation
# of the pattern, checked by a cell.
#
# The wrong versions are not written here: they are taken from the catalogue that the
# coursework's autograder uses to recognise mistakes (`minunet/coursework/mistakes.py`), so the
# gallery and the grader always show the same mistakes. The catalogue holds more than this
# gallery shows; exercise 1 runs any of them.
#
# **Know first:** tutorial 00 (the gradient check, the relative error and its floor) and tutorials
# 01-03 (the ops whose backward passes go wrong here).
# **Takes:** about 10 s to run in full, 5 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU; 25
# minutes to read.

# %%
import re
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

import minunet.coursework.mistakes
from minunet import ops
from minunet.coursework.checks import (
    KINDS,
    call_backward,
    call_forward,
    concat_inputs,
    conv_inputs,
    crop_inputs,
    distinct_inputs,
    dropout_inputs,
    im2col_inputs,
    public_checks,
    relu_inputs,
    softmax_inputs,
    tie_inputs,
    upconv_inputs,
)
from minunet.coursework.mistakes import MISTAKES, by_id, wrong_namespace
from minunet.nn import gradcheck
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    CAUGHT_BY,
    check_mistake_caught,
    check_own_relu_mistake,
    check_wrong_steps,
    report,
)

T = setup("10_wrong_gradients")
t_start = time.perf_counter()
S = T.pick(10, 6)  # the side of the images in the checks (heatmaps need a few pixels)
print(f"{len(MISTAKES)} wrong versions in the catalogue; checks on {S} x {S} images")

# %% [markdown]
# ## 1. The tools
#
# A mistake in the catalogue has an id, the region of the ops it stands in for, a hint (what
# the autograder says), and the wrong functions themselves; `wrong_namespace` gives the
# reference ops with those functions swapped in. `KINDS` says which forward and backward
# functions a region is checked through, and `call_forward` / `call_backward` call them as the
# grader does.

# %%
print(T.getsource(minunet.coursework.mistakes.Mistake))
print(T.getsource(wrong_namespace))

# %% [markdown]
# For every mistake the cell below (`examine`) does what tutorial 00 did by hand, on the
# reference op and on the wrong one, with the same inputs and the same random upstream gradient
# $\delta$:
#
# * the row of the gradient check, $\max_i |a_i - n_i| / \max(|a_i| + |n_i|, 10^{-8})$, with
#   $a$ the backward's gradient and $n$ the central difference of $\langle \delta, f(x)\rangle$;
# * the whole map of that relative error, element by element, for the heatmap. (Its maximum
#   must be the row's number: the cell asserts it.)
#
# The wrong version's numerical gradient comes from the wrong *forward*: a gradient check
# compares a backward with its own forward. When a mistake changes only the backward, the
# forward is the reference and the check measures the backward's error; when it changes both
# consistently, the check passes (section 6).

# %%
def kind_of(mistake):
    """The kind of check (a key of KINDS) that grades the mistake's region."""
    return next(k for k, v in KINDS.items() if mistake.region in (v.forward_region,
                                                                     v.backward_region))


def examine(mistake_id, make_inputs, wrt, seed=T.seed):
    """Gradient check of the reference and of the wrong version on the same inputs.

    Returns (results for the table, {input name: relative-error map of the wrong version},
    the reference's and the wrong version's analytic gradients, the inputs).
    """
    mistake = by_id(mistake_id)
    kind = kind_of(mistake)
    inputs = make_inputs(np.random.default_rng(seed), "float64")
    keys = list(inputs)
    rows, maps, grads = [], {}, {}
    for label, ns in (("reference", ops), ("wrong", wrong_namespace(ops, mistake))):

        def forward(*values, ns=ns):
            return call_forward(ns, kind, dict(zip(keys, values, strict=True)))

        def backward(dout, cache, ns=ns):
            return call_backward(ns, kind, dout, cache)

        # the row, as `python -m minunet.gradcheck` prints it
        rows += gradcheck.check_op(f"{kind} [{label}]", forward, backward, inputs, wrt,
                                   np.random.default_rng(seed + 1))
        # the same computation, keeping every element: the same upstream gradient
        out, cache = forward(*[v.copy() if isinstance(v, np.ndarray) else v
                               for v in inputs.values()])
        dout = gradcheck.random_upstream(out, np.random.default_rng(seed + 1), np)
        g = backward(dout, cache)
        g = g if isinstance(g, tuple) else (g,)
        grads[label] = dict(zip(wrt, g, strict=False))
        if label != "reference":
            for name in wrt:
                x = inputs[name].copy()

                def f(v, name=name):
                    return forward(*[v if k == name else
                                     (val.copy() if isinstance(val, np.ndarray) else val)
                                     for k, val in inputs.items()])[0]

                with np.errstate(all="ignore"):  # a wrong forward may overflow
                    num = gradcheck.numerical_gradient(f, x, dout)
                a = grads[label].get(name)
                if a is None or np.shape(a) != num.shape:  # no gradient, or the wrong shape
                    maps[name] = np.ones(num.shape)  # wrong everywhere (the row says why)
                    continue
                with np.errstate(all="ignore"):
                    maps[name] = np.abs(a - num) / np.maximum(np.abs(a) + np.abs(num),
                                                              gradcheck.REL_ERROR_FLOOR)
    for r in rows[len(wrt):]:  # the wrong version's rows: the map's maximum is the row's number
        if np.isfinite(r.max_rel_error) and np.isfinite(maps[r.input]).all():
            assert abs(maps[r.input].max() - r.max_rel_error) <= 1e-12 * max(1, r.max_rel_error)
    return rows, maps, grads["reference"], grads["wrong"], inputs


def show(mistake_id):
    """The hint and the wrong code, as the catalogue holds them."""
    mistake = by_id(mistake_id)
    print(f"{mistake.id} (region {mistake.region})\nhint: {mistake.hint}\n")
    module = T.getsource(minunet.coursework.mistakes)
    for fn in mistake.wrong.values():
        src = T.getsource(fn)
        print(src)
        for helper in sorted(set(re.findall(r"\b(_[a-z][a-z0-9_]*)\(", src)) - {"_ops"}):
            start = module.index(f"def {helper}(")
            print(module[start : module.index("\n\n\n", start)] + "\n")


gallery = {}  # id -> (rows, maps) for the figure at the end

# %% [markdown]
# ## 2. A transposed weight gradient
#
# The convolution's weight gradient is a matrix product (tutorial 01): with $D$ the upstream
# gradient laid out as (Cout, N Ho Wo) and the column matrix $X$ as (Cin k k, N Ho Wo),
#
# $$
# \frac{\partial L}{\partial W_2} = D X^\top \in \mathbb R^{C_\text{out} \times C_\text{in} k^2}.
# $$
#
# The product the other way round, $X D^\top = (D X^\top)^\top$, has the same number of
# entries, so `reshape(w.shape)` accepts it without complaint, and it holds **the same
# numbers**, only in the wrong places. A check of the gradient's norm would pass it; the
# element-wise check does not.

# %%
show("conv2d.dw_transposed")
make = conv_inputs(2, 3, 4, 3, S, S)
rows, maps, ref, bad, _ = examine("conv2d.dw_transposed", make, ("x", "w", "b"))
print(gradcheck.format_table(rows))
w_err = maps["w"].transpose(0, 2, 1, 3).reshape(4 * 3, 3 * 3)  # (Cout*k, Cin*k): kernel blocks
gallery["conv2d.dw_transposed"] = (rows, w_err)

# %% [markdown]
# The check of the derivation: the wrong $dW$ is a permutation of the right one, so the sorted
# entries agree to **1e-12** while the arrays themselves do not, and $dx$ and $db$ are right
# (their rows pass).

# %%
same_numbers = np.abs(np.sort(bad["w"].ravel()) - np.sort(ref["w"].ravel())).max()
print(f"sorted entries: max diff {same_numbers:.1e}; in place: max diff "
      f"{np.abs(bad['w'] - ref['w']).max():.3f}")
assert same_numbers < 1e-12 and np.abs(bad["w"] - ref["w"]).max() > 1e-3
assert [r.passed for r in rows] == [True, True, True, True, False, True]

# %% [markdown]
# ## 3. A col2im that overwrites instead of adding
#
# im2col copies an input pixel into one column entry for every window that covers it, so the
# adjoint adds all of them back (tutorial 01):
#
# $$
# dx[p] = \sum_{(i, j):\ \text{window at } p - (i, j) \text{ exists}}
#   \text{dcols}[(i, j),\, p - (i, j)].
# $$
#
# Writing `=` instead of `+=` keeps only the contribution of the last offset $(i, j)$ that
# covers the pixel. The error therefore lives exactly where **more than one** window covers a
# pixel: everywhere except the four corners, which only one window reaches. Below, the pair
# im2col/col2im is checked as the grader checks it: im2col as the forward, col2im as its
# backward.

# %%
show("col2im.assign")
rows, maps, ref, bad, _ = examine("col2im.assign", im2col_inputs((1, 2, S, S), 3), ("x",))
print(gradcheck.format_table(rows))
gallery["col2im.assign"] = (rows, maps["x"].max(axis=(0, 1)))

# %% [markdown]
# The check: the coverage map (how many windows read each pixel; tutorial 01) is 1 exactly at
# the four corners, and the error map is below **1e-8** there and above **1e-3** at every
# other pixel.

# %%
coverage = ops.col2im(ops.im2col(np.ones((1, 1, S, S)), 3), (1, 1, S, S), 3)[0, 0]
err = maps["x"].max(axis=(0, 1))  # (H, W): the worst channel at each pixel
print("coverage:\n", coverage.astype(int))
print(f"error where coverage = 1: max {err[coverage == 1].max():.1e}; where coverage > 1: "
      f"min {err[coverage > 1].min():.2e}")
assert err[coverage == 1].max() < 1e-8 and err[coverage > 1].min() > 1e-3

# %% [markdown]
# ## 4. A ReLU mask from the wrong tensor
#
# The ReLU passes the gradient where its **output** was positive:
# $dx = \delta \cdot [\text{out} > 0]$. A classic slip takes the mask from the upstream
# gradient instead, $dx = \delta \cdot [\delta > 0]$. The two agree where the two conditions
# agree (both true, or both false), so the error lives on the pixels where they disagree: a
# positive output with a negative upstream gradient, or a non-positive output with a positive
# one. About half the pixels, scattered at random.

# %%
show("relu.mask_from_dout")
rows, maps, ref, bad, inputs = examine("relu.mask_from_dout", relu_inputs((2, 3, S, S)), ("x",))
print(gradcheck.format_table(rows))
gallery["relu.mask_from_dout"] = (rows, maps["x"][0, 0])

# %% [markdown]
# The check: the wrong elements are exactly those where $[\text{out} > 0] \ne [\delta > 0]$
# (the two sets are equal, **0** elements differ).

# %%
dout = gradcheck.random_upstream(np.empty((2, 3, S, S)), np.random.default_rng(T.seed + 1), np)
disagree = (inputs["x"] > 0) != (dout > 0)
wrong = maps["x"] > 1e-8
print(f"{int(wrong.sum())} wrong elements of {wrong.size}; elements where the masks disagree: "
      f"{int(disagree.sum())}; symmetric difference: {int((wrong != disagree).sum())}")
assert (wrong == disagree).all()

# %% [markdown]
# ## 5. The gradient to every tied maximum
#
# When two pixels of a 2x2 window tie for the maximum, the max-pool has **no derivative** there:
# moving either tied pixel up moves the output, moving it down does not. The central difference
# averages the two one-sided slopes and gives each tied pixel half of the window's gradient.
# So a gradient check at ties fails for *every* implementation, right or wrong, which is why
# the gradient checks of `minunet.nn.gradcheck` draw distinct values (no ties) and why the project
# fixes a rule instead (docs/DESIGN.md, "Max-pool ties"): the first maximum in the order
# (0,0), (0,1), (1,0), (1,1) gets the whole gradient.
#
# The mistake gives the whole gradient to every tied maximum: a window with $m$ tied maxima
# passes $m$ times its gradient back. The rows below show both effects: on distinct inputs the
# wrong version passes (no ties, nothing to get wrong); on inputs with ties both versions fail
# against the central difference, which is why the grader compares with the reference's
# gradient there instead (the heatmap shows |wrong - reference|).

# %%
show("maxpool2x2.all_ties")
rows_distinct, _, _, _, _ = examine("maxpool2x2.all_ties", distinct_inputs((1, 2, S, S)), ("x",))
rows_ties, _, ref, bad, inputs = examine("maxpool2x2.all_ties", tie_inputs((1, 2, S, S)), ("x",))
print("distinct values:\n" + gradcheck.format_table(rows_distinct))
print("\nwith ties:\n" + gradcheck.format_table(rows_ties))
vs_ref = np.abs(bad["x"] - ref["x"])
gallery["maxpool2x2.all_ties"] = (rows_ties, vs_ref[0, 0])

# %% [markdown]
# The check of the derivation: per window, the wrong gradient adds up to $m$ times the upstream
# gradient and the reference's to exactly once; summed over all windows the difference is
# $\sum_\text{windows} (m - 1)\,\delta$, to **1e-12**. And the rows: on distinct inputs both pass,
# with ties both fail.

# %%
x = inputs["x"]
win = x.reshape(1, 2, S // 2, 2, S // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, S // 2,
                                                                              S // 2, 4)
m = (win == win.max(axis=-1, keepdims=True)).sum(axis=-1)  # tied maxima per window
dout = gradcheck.random_upstream(np.empty(m.shape), np.random.default_rng(T.seed + 1), np)
excess = bad["x"].sum() - ref["x"].sum()
print(f"windows with ties: {int((m > 1).sum())} of {m.size}; gradient mass: wrong - reference "
      f"= {excess:.6f}, sum (m - 1) * dout = {((m - 1) * dout).sum():.6f}")
assert abs(excess - ((m - 1) * dout).sum()) < 1e-12
assert all(r.passed for r in rows_distinct) and not any(r.passed for r in rows_ties)

# %% [markdown]
# ## 6. The loss normalisation, two ways
#
# The loss is a mean over the $N H W$ output pixels (docs/DESIGN.md, "Loss"), so its gradient
# carries the same factor:
#
# $$
# L = \frac{1}{NHW} \sum_x w(x)\,\big(-\log p_{l(x)}(x)\big), \qquad
# \frac{\partial L}{\partial a_k(x)} = \frac{w(x)\,\big(p_k(x) - [k = l(x)]\big)}{NHW}.
# $$
#
# **The backward forgets the factor.** The gradient is then $NHW$ times too large everywhere,
# except where $w(x) = 0$ (ignored pixels, gradient 0 either way). With $a = NHW\,n$ the
# relative error is $(NHW - 1)/(NHW + 1)$, the same at every pixel that counts.

# %%
show("softmax_cross_entropy.backward_no_scale")
make_sm = softmax_inputs(2, 3, S, S)
rows, maps, ref, bad, inputs = examine("softmax_cross_entropy.backward_no_scale", make_sm,
                                       ("logits",))
print(gradcheck.format_table(rows))
gallery["softmax_cross_entropy.backward_no_scale"] = (rows, maps["logits"].max(axis=1)[0])
nhw = 2 * S * S
counted = np.broadcast_to(inputs["weights"][:, None] != 0, maps["logits"].shape)
predicted = (nhw - 1) / (nhw + 1)
print(f"N*H*W = {nhw}: predicted relative error {predicted:.6f}; measured on weighted pixels "
      f"{maps['logits'][counted].min():.6f} .. {maps['logits'][counted].max():.6f}, on "
      f"ignored pixels max {maps['logits'][~counted].max():.1e}")

# %% [markdown]
# The check: on every pixel with $w \neq 0$ the relative error equals $(NHW - 1)/(NHW + 1)$ to
# **1e-6** (the central difference's own error is far smaller), and on pixels with $w = 0$ it
# is below **1e-8**.

# %%
assert np.abs(maps["logits"][counted] - predicted).max() < 1e-6
assert maps["logits"][~counted].max() < 1e-8

# %% [markdown]
# **The loss sums instead of averaging, forward and backward alike.** Now the forward computes
# $NHW$ times the contract's loss, and its cache tells the reference backward to use the
# matching factor 1. Forward and backward agree with each other, so the gradient check
# **passes**: it checks that a backward is the derivative of its own forward, not that the
# forward is the one the contract asks for. This mistake is caught by comparing the loss value
# with the contract (as the grader's forward test does): it is $NHW$ times too large, and a
# training run with it would effectively use a learning rate $NHW$ times too large.

# %%
show("softmax_cross_entropy.sum_not_mean")
rows, maps, ref, bad, inputs = examine("softmax_cross_entropy.sum_not_mean", make_sm,
                                       ("logits",))
print(gradcheck.format_table(rows))
wrong_ns = wrong_namespace(ops, by_id("softmax_cross_entropy.sum_not_mean"))
loss_ref, _ = ops.softmax_cross_entropy_forward(*inputs.values())
loss_bad, _ = wrong_ns.softmax_cross_entropy_forward(*inputs.values())
print(f"loss: contract {float(loss_ref):.6f}, wrong {float(loss_bad):.6f}, ratio "
      f"{float(loss_bad) / float(loss_ref):.6f} (N*H*W = {nhw})")
gallery["softmax_cross_entropy.sum_not_mean"] = (rows, maps["logits"].max(axis=1)[0])

# %% [markdown]
# The check: both rows pass, and the loss ratio is $NHW$ to **1e-9** relative.

# %%
assert all(r.passed for r in rows)
assert abs(float(loss_bad) / float(loss_ref) / nhw - 1) < 1e-9

# %% [markdown]
# ## 7. A crop whose backward is one pixel off
#
# The skip connection crops the encoder's map at its centre; with an odd margin, the crop keeps
# $\lfloor (H - h)/2 \rfloor$ rows above and the extra row below (tutorial 02). Its backward
# must zero-pad the gradient back into exactly that window. The mistake puts the extra row
# above and the extra column left instead, so the whole gradient lands one pixel down and right
# of where the crop took it. Every pixel inside the two windows then holds its neighbour's
# gradient (or 0 where it should hold one, or one where it should hold 0): the error fills both
# windows, and only the pixels outside both stay right (0 = 0).

# %%
show("center_crop.odd_margin_side")
crop_make = crop_inputs((1, 2, S + 3, S + 3), (S, S))
rows, maps, ref, bad, _ = examine("center_crop.odd_margin_side", crop_make, ("x",))
print(gradcheck.format_table(rows))
gallery["center_crop.odd_margin_side"] = (rows, maps["x"].max(axis=(0, 1)))

# %% [markdown]
# The check: with margins of 3 (odd) the right window starts at row and column 1, the wrong one
# at 2; the error map is 0 (below **1e-8**) outside the union of the two windows and above
# **1e-3** on at least every pixel of the right window that the wrong one does not cover.

# %%
err = maps["x"].max(axis=(0, 1))
right = np.zeros_like(err, bool)
right[1 : 1 + S, 1 : 1 + S] = True
shifted = np.zeros_like(err, bool)
shifted[2 : 2 + S, 2 : 2 + S] = True
print(f"outside both windows: max {err[~(right | shifted)].max():.1e}; right window only: "
      f"min {err[right & ~shifted].min():.2e}")
assert err[~(right | shifted)].max() < 1e-8 and err[right & ~shifted].min() > 1e-3

# %% [markdown]
# ## 8. The gallery: where each error lives
#
# One panel per mistake: the relative error of the wrong gradient, element by element, on a log
# scale (black: below 1e-8, right up to rounding). For the tied max-pool the panel shows
# |wrong - reference| instead, since the central difference is meaningless at ties. The weight
# gradient is drawn as a grid of 3 x 3 kernels (rows: output channels, columns: input channels);
# the others show the first image of dx or dlogits (one channel for the ReLU and the max-pool,
# the worst channel at each pixel for the others). The title gives the worst row's input, its max
# relative error and the verdict.

# %%
fig, axes = plt.subplots(2, 4, figsize=(10, 5.4))
axes = axes.ravel()
norm = LogNorm(1e-8, 1)  # black: below 1e-8, i.e. right to rounding
for ax, (mid, (rows, emap)) in zip(axes, gallery.items(), strict=False):
    bad_rows = [r for r in rows if not r.op.endswith("[reference]")]
    worst = max(bad_rows, key=lambda r: r.max_rel_error)
    im = ax.imshow(np.clip(emap, 1e-8, 1), cmap="magma", norm=norm, interpolation="nearest")
    verdict = "FAIL" if not all(r.passed for r in bad_rows) else "PASS"
    op, what = mid.split(".", 1)
    op = op.replace("softmax_cross_entropy", "softmax-xent")
    ax.set_title(f"{what}\n{op}, d{worst.input}: {worst.max_rel_error:.1e} {verdict}",
                 fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
for ax in axes[len(gallery) :]:
    ax.set_axis_off()
fig.colorbar(im, ax=axes[len(gallery)], location="left", shrink=0.9,
             label="relative error (log)")
fig.tight_layout()
T.figure(fig, "gallery")
plt.show()

# %% [markdown]
# Read the shapes: the transposed weight gradient is wrong almost everywhere (the right numbers
# in the wrong places); the overwriting col2im everywhere but the corners; the ReLU mask on a
# random half of the pixels; the tied max-pool on the tied pixels; the unscaled loss gradient
# everywhere except the ignored pixels; the sum-instead-of-mean loss nowhere (black: the check
# passes); the shifted crop everywhere in the two windows. The shape of the error map is often
# the quickest way to the mistake.
#
# ## Summary
#
# * A failing row says *that* a gradient is wrong; the map of the element-wise error says
#   *where*, and the where usually names the mistake: corners (coverage), a random half (a mask),
#   ties, a constant ratio (a normaliser), a shifted window.
# * A gradient check compares a backward with its own forward. A mistake made consistently in
#   both (the loss normalised by a sum) passes it; only a comparison with the contract catches
#   it.
# * At kinks (tied maxima) the central difference is meaningless: checks avoid them, and a rule
#   (the first maximum wins) is tested against the reference instead.
# * The wrong versions come from `minunet/coursework/mistakes.py`, the catalogue the autograder
#   uses, so this gallery and the grader's hints describe the same mistakes.
#
# ## Exercises
#
# **1. Any mistake from the catalogue.** Set `MY_ID` to another id of the catalogue (the cell
# prints them all) and read its hint. Before running, predict which of the three comparisons
# catch it: the gradient check fails ("gradient check"), the forward differs from the
# reference's ("forward"), the gradient differs from the reference's ("gradient"). Write the set
# of names into `my_caught_by`. Self-check: compared with the three comparisons the cell runs on
# the grader's inputs; when right, it prints them. The cell also checks what the grader relies
# on: every mistake is caught by at least one of them.

# %%
print(", ".join(m.id for m in MISTAKES))
MY_ID = "upconv2x2.db_one_tap"
my_kind = kind_of(by_id(MY_ID))
MAKERS = {  # the grader's input makers, small; a kind with two makes both kinds of input
    "im2col": [im2col_inputs((2, 2, S, S), 3)],
    "conv2d": [conv_inputs(2, 3, 4, 3, S, S), conv_inputs(2, 3, 4, 3, S, S, relu=True)],
    "upconv2x2": [upconv_inputs(2, 3, 4, 3, 4)],
    "maxpool2x2": [distinct_inputs((2, 2, 4, 6)), tie_inputs((2, 2, 4, 6))],  # no ties; ties
    "relu": [relu_inputs((2, 3, 5, 4))],
    "center_crop": [crop_inputs((2, 3, 9, 8), (5, 3))],
    "concat": [concat_inputs(2, 3, 2, 4, 5)],
    "softmax_cross_entropy": [softmax_inputs(2, 3, 5, 4),
                              softmax_inputs(2, 3, 4, 3, offset=1e3, spread=2.0)],  # overflow?
    "dropout": [dropout_inputs((2, 3, 4, 5))],
}
my_wrt = next(c for c in public_checks() if c.kind == my_kind).wrt
print("hint:", by_id(MY_ID).hint)
wrong_ns = wrong_namespace(ops, by_id(MY_ID))


def differs(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape != b.shape or not np.allclose(a, b, rtol=1e-10, atol=1e-12)


found = dict.fromkeys(CAUGHT_BY, False)
for make in MAKERS[my_kind]:
    rows, maps, ref, bad, inputs = examine(MY_ID, make, my_wrt)
    out_ref = call_forward(ops, my_kind, dict(inputs))[0]
    with np.errstate(all="ignore"):
        out_bad = call_forward(wrong_ns, my_kind, dict(inputs))[0]
    reference_passes = all(r.passed for r in rows[: len(my_wrt)])  # not at ties (section 5)
    found["gradient check"] |= reference_passes and not all(
        r.passed for r in rows[len(my_wrt) :])
    found["forward"] |= differs(out_ref, out_bad)
    found["gradient"] |= any(differs(ref[k], bad[k]) for k in my_wrt)
my_caught_by = None  # your prediction, e.g. {"gradient check", "gradient"}

report(check_mistake_caught(my_caught_by, found))
assert any(found.values())

# %% [markdown]
# **2. Your own mistake.** Write a wrong ReLU backward of your own in `my_relu_backward` (say,
# a mask `cache.out >= 0` instead of `> 0`: the cache holds only the output, which is never
# negative, so that mask lets every gradient through; or a mask from the sign of `dout`; or a
# threshold a little above 0), decide whether the gradient check on the usual ReLU inputs
# (|x| >= 0.1) will catch it, and set `EXPECT_PASS` (True: the check passes it). Self-check:
# your backward must differ from the right one somewhere (the check also tries inputs near the
# kink), and the gradient check's verdict must be the one you expected. (As given, the function
# is the correct one.) Tutorials 00-05 have you write the right backwards;
# `python -m minunet.coursework` grades them.

# %%
EXPECT_PASS = None  # True or False: your prediction


def my_relu_backward(dout, cache):
    return np.where(cache.out > 0, dout, 0.0)


report(check_own_relu_mistake(my_relu_backward, EXPECT_PASS, seed=T.seed))

# %% [markdown]
# **3. The step does not save a wrong gradient.** Tutorial 00 showed how the step trades
# truncation against rounding for a *right* gradient. The cell runs the gradient check of
# im2col with the overwriting col2im at the steps in `STEPS`. Predict: at which of them does it
# pass? Write the list (`[]` for none) into `my_steps`. Self-check: compared with the verdicts
# measured; when right, it prints them. The cell also checks that the reference passes at
# every step between 1e-7 and 1e-1.

# %%
STEPS = [1e-1, 1e-2, 1e-4, 1e-6, 1e-7, 1e-9]
inputs = im2col_inputs((1, 2, S, S), 3)(np.random.default_rng(T.seed), "float64")
ns_bad = wrong_namespace(ops, by_id("col2im.assign"))
passes = {"reference": {}, "col2im.assign": {}}
for label, ns in (("reference", ops), ("col2im.assign", ns_bad)):
    for h in STEPS:
        rows = gradcheck.check_op(
            f"im2col [{label}]",
            lambda x, k, ns=ns: call_forward(ns, "im2col", {"x": x, "k": k}),
            lambda d, c, ns=ns: call_backward(ns, "im2col", d, c), inputs, ("x",),
            np.random.default_rng(T.seed), h=h)
        passes[label][h] = rows[0].passed
my_steps = None  # your prediction: the steps at which the overwriting col2im passes

report(check_wrong_steps(my_steps, passes["col2im.assign"]))
assert all(passes["reference"][h] for h in STEPS if 1e-7 <= h <= 1e-1)

# %%
print(f"tutorial 10 ran in {time.perf_counter() - t_start:.1f} s "
      f"({'fast' if T.fast else 'full'} mode)")
