# %% [markdown]
# # 00. Checking a gradient
#
# Every layer of minunet has a backward pass written by hand. Before we trust one, we compare
# it with the slope of its forward pass measured numerically. This tutorial teaches that check:
#
# - central differences, and why their error first falls and then rises as the step $h$ shrinks
#   (truncation against rounding), which explains the project's step sizes;
# - the relative error with its floor, and why checks avoid kinks;
# - float64 against float32;
# - how to read the table of `python -m minunet.gradcheck`, and what a failing row says
#   when we break a backward on purpose.
#
# **Know first:** derivatives and the chain rule; NumPy arrays.
# **Takes:** about 10 s to run in full, 5 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU;
# 20 minutes to read.

# %%

import matplotlib.pyplot as plt
import numpy as np

import minunet.nn.gradcheck
import minunet.ops
from minunet.nn.gradcheck import check_op, format_table, numerical_gradient, rel_error, run_checks
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_all_four_maxpool,
    check_dropout_backward,
    check_sigmoid,
    check_tanh_step_prediction,
    report,
)

T = setup("00_gradient_check")
rng = np.random.default_rng(T.seed)

# %% [markdown]
# ## What a backward pass must return
#
# An op computes $y = f(x)$. During training the rest of the network hands its backward pass
# the upstream gradient $\bar y = \partial L / \partial y$, an array shaped like $y$, and the
# backward must return $\bar x = \partial L / \partial x$. By the chain rule
#
# $$\bar x_i = \sum_j \bar y_j \frac{\partial y_j}{\partial x_i}
#   = \frac{\partial}{\partial x_i} \langle \bar y, f(x) \rangle .$$
#
# So a backward pass is right when each $\bar x_i$ equals the slope of the scalar function
# $g(x) = \langle \bar y, f(x)\rangle$ along the $i$-th coordinate. That slope can be measured
# without any calculus, by moving $x_i$ a little in both directions.
#
# ## Central differences
#
# Taylor's theorem, for a step $h$ along the unit vector $e_i$:
#
# $$g(x \pm h e_i) = g(x) \pm h\, g' + \tfrac{h^2}{2} g'' \pm \tfrac{h^3}{6} g''' + O(h^4)$$
#
# Subtracting the two, the even terms cancel:
#
# $$\frac{g(x + h e_i) - g(x - h e_i)}{2h} = g' + \tfrac{h^2}{6} g''' + O(h^4).$$
#
# The **truncation error** is about $h^2 |g'''| / 6$: it shrinks as $h^2$. (A one-sided
# difference $(g(x+h) - g(x))/h$ keeps the $h g''/2$ term: far worse.)
#
# This is `minunet.nn.gradcheck.numerical_gradient`. It subtracts the two output arrays before it
# sums them, so that the rounding of all the outputs that do not depend on $x_i$ cancels
# exactly, and it divides by the step that was really taken:

# %%
print(T.getsource(minunet.nn.gradcheck.numerical_gradient))

# %% [markdown]
# **Check.** For $f = \tanh$ applied element-wise, the exact gradient is
# $\bar x = \bar y \,(1 - \tanh^2 x)$. With the project's float64 step $h = 10^{-4}$ the
# truncation error is about $h^2/6 \cdot |g'''| \approx 10^{-9}$, so the numerical gradient
# must agree with the exact one to a relative error below $10^{-7}$
# (`THRESHOLD_FLOAT64`, the bound every single-op check in minunet uses).

# %%
x = rng.uniform(-1, 1, 20)  # float64
dy = rng.standard_normal(20)
exact = dy * (1 - np.tanh(x) ** 2)
num = numerical_gradient(np.tanh, x.copy(), dy, h=minunet.nn.gradcheck.STEP_FLOAT64)
err = rel_error(exact, num)
print(f"h = {minunet.nn.gradcheck.STEP_FLOAT64:g}: relative error {err:.2e}")
assert err < minunet.nn.gradcheck.THRESHOLD_FLOAT64

# %% [markdown]
# ## The relative error and its floor
#
# How close is close? An absolute difference of $10^{-6}$ is excellent for a gradient entry of
# size 100 and hopeless for one of size $10^{-6}$. So minunet compares element by element
# relative to the size of the two numbers, with a floor for entries that are both about zero
# (otherwise $0/0$):
#
# $$\mathrm{rel}(a, n) = \max_i \frac{|a_i - n_i|}{\max(|a_i| + |n_i|,\ 10^{-8})}$$

# %%
print(T.getsource(minunet.nn.gradcheck.rel_error))

# %% [markdown]
# **Check.** Two entries that are both exactly 0 give 0 (the floor, not a division by zero);
# $a = 10^{-12}$ against $n = 2\cdot 10^{-12}$ is a 33 % difference of two tiny numbers, but
# measured against the floor it is $10^{-12} / 10^{-8} = 10^{-4}$: tiny values are judged
# by their absolute difference. Both printed values must be exactly these: 0 and $10^{-4}$
# (to rounding, below $10^{-15}$ apart).

# %%
print(rel_error(np.zeros(3), np.zeros(3)), rel_error(np.array([1e-12]), np.array([2e-12])))
assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
assert abs(rel_error(np.array([1e-12]), np.array([2e-12])) - 1e-4) < 1e-15

# %% [markdown]
# ## The step $h$: truncation against rounding
#
# A computer does not evaluate $g$ exactly: each evaluation is off by about
# $\varepsilon |g|$, with $\varepsilon$ the machine epsilon ($2.2\cdot10^{-16}$ in float64,
# $1.2\cdot10^{-7}$ in float32). The difference of two such values, divided by $2h$, carries a
# **rounding error** of about $\varepsilon |g| / h$, which *grows* as $h$ shrinks. The total
#
# $$E(h) \approx \frac{h^2}{6} |g'''| + \frac{\varepsilon |g|}{h}$$
#
# is smallest where the two terms balance, at $h^\ast \sim \varepsilon^{1/3}$: about
# $6\cdot 10^{-6}$ in float64 and $5\cdot 10^{-3}$ in float32. Let us measure $E(h)$ for
# $\tanh$ in both precisions, and for a convolution (linear in $x$: $g''' = 0$, so no
# truncation error at all).

# %%
def tanh_error(h, dtype):
    xd = x.astype(dtype)
    num = numerical_gradient(np.tanh, xd.copy(), dy.astype(dtype), h)
    return rel_error(dy * (1 - np.tanh(xd.astype(np.float64)) ** 2), num)


xc = rng.standard_normal((1, 2, 6, 6))
wc = rng.standard_normal((3, 2, 3, 3))
bc = np.zeros(3)
out, cache = minunet.ops.conv2d_forward(xc, wc, bc)
dyc = rng.standard_normal(out.shape)
dxc = minunet.ops.conv2d_backward(dyc, cache)[0]


def conv_error(h):
    def f(v):
        return minunet.ops.conv2d_forward(v, wc, bc)[0]
    return rel_error(dxc, numerical_gradient(f, xc.copy(), dyc, h))


n_h = T.pick(41, 11)
hs64 = np.logspace(-10, 0, n_h)
hs32 = np.logspace(-6, 0, (n_h + 1) // 2 + 4)  # in float32, x + 1e-8 == x: no step at all
e64 = np.array([tanh_error(h, np.float64) for h in hs64])
e32 = np.array([tanh_error(h, np.float32) for h in hs32])
econv = np.array([conv_error(h) for h in hs64])
best64, best32 = hs64[np.argmin(e64)], hs32[np.argmin(e32)]
print(f"tanh, float64: smallest error {e64.min():.1e} at h = {best64:.1e}  "
      f"(eps^(1/3) = {np.finfo(np.float64).eps ** (1 / 3):.1e})")
print(f"tanh, float32: smallest error {e32.min():.1e} at h = {best32:.1e}  "
      f"(eps^(1/3) = {np.finfo(np.float32).eps ** (1 / 3):.1e})")
print(f"conv, float64: error {econv[0]:.1e} at h = {hs64[0]:.0e}, {econv[-1]:.1e} at h = 1")

fig, ax = plt.subplots(figsize=(7, 4.2))
ax.loglog(hs64, e64, "o-", ms=3, label="tanh, float64")
ax.loglog(hs32, e32, "s-", ms=3, label="tanh, float32")
ax.loglog(hs64, econv, "^-", ms=3, label="conv2d (linear), float64")
ax.loglog(hs64, hs64**2 / 6, "k--", lw=0.8, label=r"truncation $h^2/6$")
ax.loglog(hs64, np.finfo(np.float64).eps / hs64, "k:", lw=0.8, label=r"rounding $\varepsilon/h$")
gc = minunet.nn.gradcheck
for h, style in ((gc.STEP_FLOAT64, "C0"), (gc.STEP_FLOAT32, "C1")):
    ax.axvline(h, color=style, lw=0.8, alpha=0.6)
ax.set_ylim(1e-16, 1)
ax.set_xlabel("step h")
ax.set_ylabel("relative error")
ax.set_title("central differences: error against the step (vertical lines: minunet's steps)")
ax.legend(fontsize=8)
T.figure(fig, "error_vs_h")
plt.show()

# %% [markdown]
# Read the figure from right to left. For $\tanh$ the error first falls as $h^2$ (the dashed
# line), reaches its bottom near $\varepsilon^{1/3}$, then climbs again as $\varepsilon / h$
# (the dotted line) when rounding takes over. float32 has the same shape, but its rounding
# line is $10^9$ times higher, so its best error is only about $10^{-6}$ to $10^{-5}$. The
# convolution has no truncation error, so its error only falls as $h$ grows.
#
# That explains the project's steps: most U-Net ops are linear in each input (convolution,
# up-convolution, crop, concat, dropout) or piecewise linear (ReLU, max-pool), so a larger step
# only helps. In float64 each op takes its own (its spec in `minunet/nn/opspec.py`): $h = 1$
# for the linear ones, the largest step that stays off the kinks for the piecewise-linear ones
# ($0.04$ for ReLU and max-pool, $0.01$ for a convolution with its ReLU), and
# $h = 10^{-4}$ (the blue line) for smooth ops such as the softmax, where the truncation error
# is still small. float32 uses $h = 3\cdot10^{-2}$ (the orange line) for every op, with looser
# thresholds, because its rounding error would otherwise drown everything.
#
# **Check.** The measured best steps must lie within a factor of 30 of $\varepsilon^{1/3}$, in
# both precisions (the constants $|g|$ and $|g'''|$ move the optimum a little).

# %%
for name, best, dtype in (("float64", best64, np.float64), ("float32", best32, np.float32)):
    ratio = best / np.finfo(dtype).eps ** (1 / 3)
    print(f"{name}: best h / eps^(1/3) = {ratio:.2f}")
    assert 1 / 30 < ratio < 30

# %% [markdown]
# ## Kinks
#
# ReLU, $\max(x, 0)$, has no derivative at $x = 0$, and max-pool has none where two inputs of
# a window tie. If $x_i$ lies closer to the kink than $h$, the central difference straddles it
# and measures a slope that is neither side's: for $0 < x < h$ it gives
# $\frac{(x+h) - 0}{2h} = \frac12 + \frac{x}{2h}$ instead of 1.

# %%
print(T.getsource(minunet.ops.relu_backward))

# %% [markdown]
# **Check.** With $h = 10^{-4}$, ReLU inputs $x = \pm 3\cdot10^{-5}$ (closer to 0 than $h$) give a
# relative error above 0.1 even though `relu_backward` is right; inputs with $|x| \ge 0.1$
# (what `minunet.nn.gradcheck` draws for the ReLU) give an error below $10^{-7}$.

# %%
def relu_check_error(xr):
    out, cache = minunet.ops.relu_forward(xr)
    dyr = np.ones_like(xr)
    analytic = minunet.ops.relu_backward(dyr, cache)
    numeric = numerical_gradient(lambda v: minunet.ops.relu_forward(v)[0], xr.copy(), dyr, 1e-4)
    return rel_error(analytic, numeric), numeric


near, near_num = relu_check_error(np.array([3e-5, -3e-5]))
far, _ = relu_check_error(np.array([0.1, -0.1, 0.7, -0.4]))
print(f"near the kink: numerical slopes {near_num}, relative error {near:.2f}")
print(f"|x| >= 0.1: relative error {far:.1e}")
assert near > 0.1 and far < 1e-7

# %% [markdown]
# The same goes for max-pool: if two values of a window are closer than $h$, a step can change
# which one is the maximum. minunet's checks therefore draw distinct values 0.1 apart for
# max-pool, and tutorial 02 shows the rule for exact ties (docs/DESIGN.md, "Max-pool ties").
#
# ## Checking one op: `check_op`
#
# `check_op` puts it together for an op pair `forward(*inputs) -> (out, cache)`,
# `backward(dout, cache) -> grads`: it draws a random upstream gradient, runs the backward once,
# computes the numerical gradient of every input in `wrt`, and returns one result per input.

# %%
print(T.getsource(minunet.nn.gradcheck.check_op))

# %% [markdown]
# **Check.** The plain convolution (3 input channels, 4 output channels, a 3x3 kernel) must pass
# for $x$, $w$ and $b$ with a relative error below the threshold $10^{-7}$.

# %%
conv_inputs = {"x": rng.standard_normal((2, 3, 7, 6)), "w": rng.standard_normal((4, 3, 3, 3)),
               "b": rng.standard_normal(4)}
results = check_op("conv2d (k=3)", minunet.ops.conv2d_forward, minunet.ops.conv2d_backward,
                   conv_inputs, ("x", "w", "b"), rng)
print(format_table(results))
assert all(r.passed and r.max_rel_error < 1e-7 for r in results)

# %% [markdown]
# ## Dropout: a mask, scaled
#
# The table below has a row for dropout, which the U-Net uses at the end of its contracting
# path (the paper: "Drop-out layers at the end of the contracting path perform further
# implicit data augmentation"), so here is what it computes. During training each unit is
# kept with probability $1 - p$ ($p = 0.5$ in the paper) and set to 0 otherwise. The kept
# units are multiplied by $1/(1 - p)$ (*inverted* dropout): then the expected output equals
# the input, $\mathbb E[\mathrm{out}] = (1-p) \cdot rac{x}{1-p} = x$, and at inference the
# layer is simply left out, with nothing to rescale. minunet draws the mask once,
# $m_i \in \{0, rac{1}{1-p}\}$, and the forward is an element-wise product with it:
#
# $$\mathrm{out}_i = m_i\, x_i, \qquad ar x_i = rac{\partial}{\partial x_i} \sum_j
#   ar y_j\, m_j x_j = m_i\, ar y_i .$$
#
# The mask is an input of the op, not drawn inside it: the forward and the backward must use
# the same mask, and a gradient check needs a function that gives the same output twice.

# %%
print(T.getsource(minunet.ops.dropout_forward))
print(T.getsource(minunet.ops.dropout_backward))

# %% [markdown]
# **Check.** Over a million units with $p = 0.5$, the mask holds only 0 and $2$, keeps a
# fraction within 0.005 of one half, and the mean of the output of an all-ones input is within
# 0.01 of 1 (inverted scaling). The gradient check passes below $10^{-7}$ (dropout is linear in
# $x$).

# %%
mask = minunet.ops.dropout_mask((1000, 1000), 0.5, rng, np.float64)
kept = float((mask != 0).mean())
mean_out = float(minunet.ops.dropout_forward(np.ones((1000, 1000)), mask)[0].mean())
xd = rng.standard_normal((2, 3, 4, 4))
drop = check_op("dropout", minunet.ops.dropout_forward, minunet.ops.dropout_backward,
                {"x": xd, "scale_mask": minunet.ops.dropout_mask(xd.shape, 0.5, rng, xd.dtype)},
                ("x",), rng)
print(f"mask values {sorted(set(np.unique(mask).tolist()))}, kept {kept:.4f}, "
      f"mean output {mean_out:.4f}")
print(format_table(drop))
assert set(np.unique(mask).tolist()) == {0.0, 2.0} and abs(kept - 0.5) < 0.005
assert abs(mean_out - 1) < 0.01 and drop[0].passed

# %% [markdown]
# **Your turn: the dropout backward.** Write the body of `dropout_backward_mine` below (it gets
# the upstream gradient and the forward's cache, whose `scale_mask` is the mask $m$). The cell
# checks it with the gradient checker and against `minunet.ops.dropout_backward`, and when it
# is wrong names the mistake from the coursework's catalogue. Until you write it, the cell says
# "not attempted yet". The graded version of this and every later "your turn":
# `python -m minunet.coursework` (tutorial README).

# %%
def dropout_backward_mine(dout, cache):
    """dout: the output's shape; cache.scale_mask: 0 or 1/(1-p) per unit. Returns dx."""
    raise NotImplementedError("your turn: write the dropout backward here")


report(check_dropout_backward(dropout_backward_mine))

# %% [markdown]
# ## The whole table: `run_checks` and `python -m minunet.gradcheck`
#
# `run_checks` runs the named check of every U-Net op, each with inputs made to avoid its
# kinks; `python -m minunet.gradcheck` prints the same table from a shell. `kind="plain"` checks
# the lesson's ops (`minunet/ops`), `kind="fast"` the fast ones (`minunet/fast`), which the
# network runs on by default. One row per op and input: the input's shape, the largest relative
# error over its elements, the threshold, PASS or FAIL.
#
# **Check.** Every row must pass, in both doors, in float64.

# %%
plain = run_checks(kind="plain")
print(format_table(plain))
print()
print(minunet.nn.gradcheck.summary_line(plain))
assert all(r.passed for r in plain)

# %%
fast = run_checks(kind="fast")
print("fast ops:", minunet.nn.gradcheck.summary_line(fast))
assert all(r.passed for r in fast)

# %% [markdown]
# ## float64 against float32
#
# The network trains in float32, so the float32 code path deserves a check too. But float32
# keeps only about 7 digits: with the larger step $3\cdot10^{-2}$ the best we can hope for is
# the bottom of the float32 curve above, and the central difference of an op with many terms
# (a convolution sums hundreds of products) is worse. So the float32 check uses looser
# thresholds ($2\cdot10^{-2}$ for ops that compute, $10^{-6}$ for ops that only copy or select)
# and raises the floor of the relative error to 1 % of the largest gradient entry. It catches
# a wrong cast or a gradient off by a few percent; only the float64 check proves a gradient
# right.
#
# **Check.** Every float32 row passes its threshold, and the worst float32 error is at least
# 100 times the worst float64 one.

# %%
single = run_checks(dtype="float32", kind="plain")
print(format_table(single))
worst32 = max(r.max_rel_error for r in single)
worst64 = max(r.max_rel_error for r in plain)
print(f"\nworst float32 error {worst32:.1e}, worst float64 error {worst64:.1e}, "
      f"ratio {worst32 / worst64:.0e}")
assert all(r.passed for r in single) and worst32 > 100 * worst64

# %% [markdown]
# ## Break a backward on purpose, and read the failing row
#
# A classic mistake in a hand-written ReLU backward is to forget the mask: let the gradient
# through everywhere. Here is such a backward, checked like the real one, on inputs with
# $|x| \ge 0.1$:

# %%
def relu_backward_broken(dout, cache):
    return dout  # BUG: the gradient should pass only where the output is > 0


xr = rng.uniform(0.1, 1.0, (1, 2, 3, 3)) * rng.choice([-1.0, 1.0], (1, 2, 3, 3))
broken = check_op("relu (broken)", minunet.ops.relu_forward, relu_backward_broken, {"x": xr},
                  ("x",), rng)
print(format_table(broken))

# %% [markdown]
# The row fails, and the line below it names the worst element: the backward gives a value
# there, the central difference gives 0. A zero numerical slope means the output does not
# depend on that input at all, which for a ReLU means the input was negative. That points
# straight at the missing mask.
#
# **Check.** The row fails with a relative error of exactly 1 (one side is 0), and the worst
# element is an input below 0.

# %%
r = broken[0]
print(f"passed: {r.passed}, max rel error {r.max_rel_error}, x at the worst element "
      f"{xr[r.worst_index]:.3f}, numeric {r.numeric}")
assert not r.passed and r.max_rel_error == 1.0 and xr[r.worst_index] < 0 and r.numeric == 0.0

# %% [markdown]
# A relative error of exactly 1 says "one side is zero"; an error near $1/3$ says one side is
# twice the other (a factor of 2 forgotten or added); an error of $10^{-3}$ to $10^{-2}$ in
# float64 usually means a kink was crossed or a small term was dropped. Tutorial 10 goes
# through a whole gallery of such mistakes.
#
# ## Summary
#
# - A backward is right when $\bar x_i = \partial \langle \bar y, f(x)\rangle / \partial x_i$;
#   central differences measure that slope with a truncation error $\propto h^2$.
# - Rounding adds an error $\propto \varepsilon / h$; the best step is near
#   $\varepsilon^{1/3}$ for smooth functions, larger for (piecewise) linear ones. minunet uses
#   $h = 10^{-4}$ for smooth ops in float64, up to $h = 1$ for linear ones, and
#   $3\cdot10^{-2}$ in float32.
# - The relative error has a $10^{-8}$ floor, so entries that are both about 0 do not divide by
#   0. A single op in float64 passes below $10^{-7}$.
# - Inputs must stay farther than $h$ from kinks (ReLU at 0, max-pool ties).
# - A failing row names the worst element with both values; their ratio tells the kind of bug.
#
# ## Exercises
#
# **1. Predict before you run.** For $\tanh$ in float64 at $h = 10^{-2}$ the error is
# dominated by truncation, $\approx h^2 |g'''| / 6$; with $|g'''| \le 2$ for $\tanh$ it stays
# below $h^2/3$. The first line the cell prints measures it. Predict the error at
# $h = 10^{-3}$ from the error model (no new measurement), write it into `my_error` and rerun.
# Self-check: your prediction is within a factor of 3 of the measured error at $10^{-3}$ (the
# cell measures it only to judge). Then try `h_mine = 1e-4` or smaller: where does the
# prediction stop working, and why?

# %%
my_error = None  # your predicted relative error at h_mine
h_mine = 1e-3

err_2 = tanh_error(1e-2, np.float64)
print(f"h = 0.01: relative error {err_2:.2e}; truncation bound h^2/3 = {1e-2**2 / 3:.1e}")
assert err_2 < 1e-2**2 / 3
report(check_tanh_step_prediction(my_error, tanh_error(h_mine, np.float64)))

# %% [markdown]
# **2. Break max-pool.** Write a max-pool backward that gives each window's whole gradient to
# all four of its pixels (another classic mistake) in `maxpool_backward_broken`. Self-check:
# the cell confirms that it is exactly that broken version, that the gradient checker then
# FAILS it, and that the numerical slope at the worst element is 0 (that input was not its
# window's maximum: the output does not depend on it). Tutorial 02 has you write the right one.

# %%
def maxpool_backward_broken(dout, cache):
    """dout: (N, C, H/2, W/2). Returns dx (N, C, H, W): each window's gradient at all 4."""
    raise NotImplementedError("your turn: the deliberately broken backward")


report(check_all_four_maxpool(maxpool_backward_broken))

# %% [markdown]
# **3. Check your own op.** The sigmoid $s(x) = 1/(1 + e^{-x})$ has $s' = s(1 - s)$. Write
# `sigmoid_forward(x) -> (out, cache)` and `sigmoid_backward(dout, cache) -> dx` (what should
# the cache keep?). Self-check: the forward equals $1/(1 + e^{-x})$, and `check_op` passes your
# pair with a relative error below $10^{-7}$; a wrong backward gets a hint.

# %%
def sigmoid_forward(x):
    """x: any shape. Returns out = 1 / (1 + exp(-x)) and a cache of your choice."""
    raise NotImplementedError("your turn: the sigmoid's forward")


def sigmoid_backward(dout, cache):
    """dout: the output's shape. Returns dx."""
    raise NotImplementedError("your turn: the sigmoid's backward")


report(check_sigmoid(sigmoid_forward, sigmoid_backward))
