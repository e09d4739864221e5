# %% [markdown]
# # 05. Training
#
# Tutorial 04 overfitted one tile. Now we train the U-Net the way the paper did, on many
# augmented tiles, and end with a trained model:
#
# - momentum SGD with momentum 0.99 and one large tile per step, and why the paper chose that;
# - the learning-rate warm-up, which is not in the paper, and why minunet has one;
# - a run of `python -m minunet.train`, called from Python, and its run folder: settings,
#   metrics, plots, checkpoints, resuming;
# - loss curves and predictions improving over the iterations, on the built-in synthetic EM
#   data; then on the ISBI 2012 slices when you give their folder.
#
# **Know first:** tutorial 04 (the network and one training step).
# **Takes:** about 2 minutes to run in full (most of it training; 98 s measured), 2 more with
# the ISBI 2012 cells, 15 s in fast mode (`MINUNET_FAST=1`), on a 2-core CPU without a GPU; up
# to twice as long when the machine is busy with other work; 20 minutes to read.

# %%
import contextlib
import csv
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minunet.nn.optim
import minunet.train
from minunet.data import load_dataset
from minunet.evaluation import metrics as isbi_metrics
from minunet.inference.tiles import predict
from minunet.nn.optim import MomentumSGD, SGDConfig
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_effect_size,
    check_momentum_step,
    check_resume,
    check_steady_step,
    report,
)

T = setup("05_training")

# %% [markdown]
# ## Momentum 0.99 and one tile per step
#
# The paper (Sec. 3): "we favor large input tiles over a large batch size and hence reduce the
# batch to a single image. Accordingly we use a high momentum (0.99) such that a large number of
# the previously seen training samples determine the update in the current optimization step."
# minunet uses Caffe's form of momentum SGD, as the paper did:
#
# $$v_t = m\, v_{t-1} - \eta\, g_t, \qquad \theta_t = \theta_{t-1} + v_t .$$
#
# Unrolled, $v_t = -\eta \sum_{s \le t} m^{t-s} g_s$: each update is a weighted sum of all past
# gradients, a gradient from $n$ steps ago weighted by $m^n$. With $m = 0.99$ a gradient still
# counts $0.99^{100} \approx 0.37$ after 100 steps, so about $1/(1-m) = 100$ tiles make up
# one update: a large batch spread over time, while each step's forward and backward pass
# handle only one large tile (which is what fits in memory). The price: for a steady gradient
# $g$ the step grows to $\eta g / (1 - m) = 100\, \eta g$, so the learning rate must be 100
# times smaller than without momentum.

# %%
print(T.getsource(minunet.nn.optim.MomentumSGD.step))
print(T.getsource(minunet.nn.optim.MomentumSGD.lr_at))

# %% [markdown]
# (`backend.sgd_update_many` applies $v \leftarrow m v - \eta (g + \lambda w)$,
# $w \leftarrow w + v$ to every parameter in one pass over memory; $\lambda$ is the weight
# decay, 0 by default, as in the paper.)
#
# **Check.** With a constant gradient $g = 1$ and $\eta = 10^{-3}$, after 1000 steps the step
# $|v|$ is $\eta / (1 - m) = 0.1$ to within 0.01 %, and the weight of a gradient 100 steps
# old is $0.99^{100}$, between 0.36 and 0.37.

# %%
theta = {"w": np.zeros(1)}
opt_demo = MomentumSGD(theta, SGDConfig(lr=1e-3, momentum=0.99))
for it in range(1000):
    before = theta["w"].copy()
    opt_demo.step({"w": np.ones(1)}, it)
step = float(before[0] - theta["w"][0])
print(f"step after 1000 iterations: {step:.6f} (lr / (1 - m) = {1e-3 / (1 - 0.99):.6f}); "
      f"0.99^100 = {0.99**100:.4f}")
assert abs(step - 0.1) < 1e-5 and 0.36 < 0.99**100 < 0.37

# %% [markdown]
# **Your turn: one momentum step.** Write `momentum_step(w, v, g, lr, m)` that returns the new
# weights and velocity, `(w, v)`, in the convention above (Caffe's, the paper's). The check
# runs five steps of yours and of `MomentumSGD` on the same gradients and compares weights and
# velocities; a wrong answer gets a hint that names the convention or the order it missed.
# Graded version: `python -m minunet.coursework`.

# %%
def momentum_step(w, v, g, lr, m):
    """w, v, g: arrays of one shape; lr, m: numbers. Returns (w, v) after one step."""
    raise NotImplementedError("your turn: one step of momentum SGD")


report(check_momentum_step(momentum_step))

# %% [markdown]
# ## The warm-up
#
# The paper starts at full learning rate. minunet ramps it up linearly over the first
# iterations (`--warmup`, 100 by default): the He-initialised U-Net starts with large logits
# (tutorial 03), so its first gradients are large, and momentum 0.99 piles about 100 of them
# up before they decay. With a ramp, the first large gradients move the weights only a little;
# without one, the project saw the first layers' ReLUs switch off for good ("die") in its CPU
# runs (see the docstring of `minunet/nn/optim.py`).
#
# **Check.** With `warmup=100` and a base rate of $10^{-3}$, the rate starts at
# $10^{-3}/100 = 10^{-5}$, is $5 \cdot 10^{-4}$ halfway and reaches $10^{-3}$ at iteration 99.

# %%
sched = MomentumSGD({"w": np.zeros(1)}, SGDConfig(lr=1e-3, warmup=100))
rates = [sched.lr_at(it) for it in (0, 49, 99, 500)]
print("lr at iterations 0, 49, 99, 500:", rates)
assert np.allclose(rates, [1e-5, 5e-4, 1e-3, 1e-3], rtol=1e-12, atol=0)

# %% [markdown]
# ## One training step
#
# The step is the one of tutorial 04, now with the paper's weight map (tutorial 03) and
# dropout, in `minunet.train`:

# %%
print(T.getsource(minunet.train.train_step))

# %% [markdown]
# Around it, the trainer draws a new tile for every step: a random crop of a training image with
# the paper's augmentation (elastic deformation on a 3x3 grid with 10 px standard deviation,
# shifts, rotations, flips, gray values; tutorial 06), its labels and its precomputed weight
# map deformed together. Every few hundred iterations it predicts the whole validation images
# (overlap-tile, tutorial 07) and writes the run folder.
#
# **Validation, not held out.** The project keeps two kinds of images out of training, with the
# words of its ISBI 2012 protocol (docs/DESIGN.md): *validation* images are scored during
# training and choose `best.npz`, the checkpoint kept; *held-out* images are never trained on
# and never used to choose anything, and are scored once at the end. A score on validation
# images flatters the model a little (they chose it), so only held-out scores are reported as
# a model's quality. The synthetic run below has validation images only.
#
# ## A training run, called from Python
#
# `python -m minunet.train` is the command; `minunet.train.main` takes the same options as a
# list. The CPU preset (base 8, tile 316, 16 synthetic EM slices of $384 \times 384$, 3 of them
# for validation) trains a useful model on a laptop. Here we train it for 600 iterations (fast mode:
# on 188 tiles for 40), in stages, continuing each stage from the last one's checkpoint with
# `--resume`, so that we can look at its predictions along the way. A resumed run continues
# exactly as if it had never stopped (docs/DESIGN.md, "Checkpoints"). The preset's learning
# rate decays to zero at the last iteration (`--schedule poly`); with stages of growing
# length that end would move, so this demonstration keeps the rate constant at $10^{-3}$.
#
# The run folder goes to a temporary directory, removed at the end of the tutorial; for a run
# you want to keep, give `--out` yourself, e.g.
# `python -m minunet.train --preset cpu --iters 600 --out runs/my_first_unet`.

# %%
if T.fast:
    settings = ["--preset", "tiny", "--base", "8", "--data", "synthetic:n=6,size=256"]
    stages, val_every = [5, 10, 20, 40], 10
else:
    settings = ["--preset", "cpu"]  # base 8, tile 316, synthetic:n=16,size=384
    stages, val_every = [25, 100, 300, 600], 50
settings += ["--device", "auto", "--seed", "0", "--val-every", str(val_every),  # auto: a GPU
             "--schedule", "constant", "--lr", "0.001"]  # if there is one
work = Path(tempfile.mkdtemp(prefix="minunet-05-"))
run = work / "run"


def train(args):
    """minunet.train.main(args); its printout, with the temporary folder's path as RUN."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = minunet.train.main(args)
    if status != 0:
        raise RuntimeError(f"training failed (exit {status}):\n{text.getvalue()[-2000:]}")
    return text.getvalue().replace(str(run), "RUN")


data = load_dataset(dict(zip(settings[::2], settings[1::2], strict=True)).get(
    "--data", "synthetic:n=16,size=384"))
val_image = data.val[0]
snapshots = []  # (iteration, P(cell) on the first validation image)
seconds = 0.0
for k, iters in enumerate(stages):
    args = [*settings, "--iters", str(iters), "--out", str(run)]
    if k > 0:
        args += ["--resume", str(run / "last.npz")]
    start = time.perf_counter()
    log = train(args)
    seconds += time.perf_counter() - start
    if k == 0:
        print(log[: log.index("\niteration")] if "\niteration" in log else log)
    ckpt = load_checkpoint(run / "last.npz")
    model = model_from_checkpoint(ckpt, run / "last.npz")
    snapshots.append((ckpt.iteration, predict(model, val_image.image)[1]))
    print(f"stage {k + 1}: trained to iteration {ckpt.iteration} ({seconds:.0f} s so far)")

# %% [markdown]
# ## The run folder

# %%
for path in sorted(run.iterdir()):
    print(f"{path.name:22s} {path.stat().st_size / 1e3:9.1f} kB")
with open(run / "metrics.csv", newline="") as f:
    metrics = [{k: float(v) if v else float("nan") for k, v in row.items()}
               for row in csv.DictReader(f)]
print()
print((run / "metrics.csv").read_text())

# %% [markdown]
# `config.json` holds every setting as resolved (the preset's values, then the options given);
# `metrics.csv` one row per validation: the wall-clock seconds so far, the weighted training
# loss averaged since the previous row, and scores on the validation images; `loss.png` and
# `val_predictions.png` plot them; `last.npz` and `best.npz` are checkpoints (parameters,
# momentum, iteration, random state, config), `best` the one with the lowest validation
# `pixel_error`. The scores, defined once, since two of them sound alike:
#
# - `val_xent`: the plain (unweighted) cross-entropy of the predicted probabilities, the mean
#   of $-\log p_{\text{true class}}$ over the pixels; it punishes confident mistakes hardest.
# - `pixel_accuracy`: the fraction of pixels classified right when P(cell) > 0.5 calls a pixel
#   cell. $1 - $ accuracy is the **error rate at threshold 0.5**.
# - `pixel_error`: the **ISBI pixel error** (tutorial 09): $1 - $ the F-score of the cell
#   pixels (precision against recall), at the best of the thresholds 0, 0.1, ..., 1. It is not
#   $1 - $ accuracy: it uses an F-score instead of a plain fraction, and the best threshold
#   instead of 0.5, so it is usually the smaller of the two.
# - `rand_error`, `v_rand`, `v_info`: the ISBI segmentation scores (tutorial 09), computed on
#   the cells as connected regions: the Rand error is $1 - $ the Rand F-score (how often two
#   pixels are rightly in the same cell or in different ones, lower is better); V_rand is that
#   F-score after thinning the predicted membranes to one pixel, as the challenge ranks
#   (higher is better); V_info the same with information theory.
#
# ## Loss curves and predictions over the iterations

# %%
its = [m["iteration"] for m in metrics]
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(its, [m["train_loss_weighted"] for m in metrics], "o-",
        label="training loss (weighted, augmented tiles)")
ax.plot(its, [m["val_xent"] for m in metrics], "s-", label="validation cross-entropy")
ax.plot(its, [1 - m["pixel_accuracy"] for m in metrics], "^-",
        label="validation error rate at 0.5 (1 - accuracy)")
ax.plot(its, [m["pixel_error"] for m in metrics], "v-",
        label="validation ISBI pixel error (best threshold)")
ax.set_yscale("log")
ax.set_xlabel("iteration")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
ax.set_title("training on synthetic EM")
T.figure(fig, "loss_curves")
plt.show()

fig, axes = plt.subplots(1, len(snapshots) + 2, figsize=(2.6 * (len(snapshots) + 2), 3))
axes[0].imshow(val_image.image, cmap="gray")
axes[0].set_title("validation image")
axes[1].imshow(val_image.label, cmap="gray")
axes[1].set_title("truth (white: cell)")
for ax, (it, prob) in zip(axes[2:], snapshots, strict=True):
    ax.imshow(prob, cmap="magma", vmin=0, vmax=1)
    ax.set_title(f"P(cell), iteration {it}")
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
T.figure(fig, "predictions_over_iterations")
plt.show()

# %% [markdown]
# Early on the network predicts about the same everywhere; a few dozen iterations later the
# membranes appear. The dark organelles inside the cells, which the labels count as cell, stay
# the hardest part: look for the dark specks inside the cells. Do the later iterations still
# help? Read the curves rather than the pictures, since how sure a prediction looks and how
# right it is can move apart: the cross-entropy punishes a confident mistake hardest, so it can
# rise while the error rates stay flat or even fall, and with a constant learning rate and one
# tile per step the scores also wander from one validation to the next. The cell below says,
# for this run, which way each score moved over the last stage, and how sure the predictions
# on the first validation image were at each stage (the mean of $|2p - 1|$: 0 for a map of
# 0.5 everywhere, 1 for a map of zeros and ones).
#
# How good is the result? A trivial segmenter that calls every pixel "cell" gets a pixel
# accuracy equal to the fraction of cell pixels.
#
# **Check.** The run reached its last iteration with a metrics row at the end of every stage.
# In full mode, also: the final pixel accuracy on the validation images is at least 0.05 above
# the trivial one, and the validation cross-entropy at the end is below the first one. (Fast
# mode trains far too little to learn; its numbers only show that everything runs.)

# %%
val_labels = np.concatenate([s.label.ravel() for s in data.val])
trivial = float(val_labels.mean())  # accuracy of "every pixel is cell"
final = metrics[-1]
middle = next(m for m in metrics if m["iteration"] == stages[-2])
for key, name in (("val_xent", "cross-entropy"), ("pixel_accuracy", "pixel accuracy"),
                  ("pixel_error", "ISBI pixel error"), ("rand_error", "Rand error")):
    a, b = middle[key], final[key]
    print(f"iterations {stages[-2]} -> {stages[-1]}: {name} {a:.3f} -> {b:.3f} "
          f"({'rose' if b > a else 'fell' if b < a else 'unchanged'})")
confidence = [float(np.abs(2 * prob - 1).mean()) for _, prob in snapshots]
print("confidence mean |2p - 1| at iterations "
      f"{', '.join(f'{it}: {c:.3f}' for (it, _), c in zip(snapshots, confidence, strict=True))}")
print(f"{final['iteration']:.0f} iterations in {seconds:.0f} s: pixel accuracy "
      f"{final['pixel_accuracy']:.3f} (everything-is-cell: {trivial:.3f}), "
      f"Rand error {final['rand_error']:.3f}, cross-entropy {metrics[0]['val_xent']:.3f} -> "
      f"{final['val_xent']:.3f}")
assert ckpt.iteration == stages[-1] and set(stages) <= set(its)
if not T.fast:
    assert final["pixel_accuracy"] >= trivial + 0.05
    assert final["val_xent"] < metrics[0]["val_xent"]

# %% [markdown]
# The trained model is `model` (the last checkpoint, on the CPU). `python -m minunet.predict
# --checkpoint RUN/last.npz IMAGES --out OUT` applies such a model to image files, and the
# README's CPU-preset numbers come from the preset's own run (3000 iterations, the learning rate
# decaying to zero).
#
# ## On ISBI 2012
#
# The same recipe on the real data: the ISBI 2012 challenge's 30 training slices of
# serial-section EM ($512 \times 512$), split by the project's protocol (docs/DESIGN.md, "ISBI
# 2012 protocol"): slices 00-22 train, 23-24 choose the checkpoint, 25-29 are held out and
# scored only at the end, so that the slices that pick a model are never the ones that judge
# it. minunet never downloads anything; give the folder that holds `images/` and `labels/` in
# the environment variable `MINUNET_ISBI2012` and run this tutorial again (the banner at the top
# says whether it was found).
#
# Instead of an iteration count, this run gets a time budget, `--time` (docs/DESIGN.md, "Time
# budget"): it measures its own step and validation times, chooses the iterations that fit, and
# lets the learning rate decay to zero at the end. Two minutes on a CPU is enough to see the
# membranes appear, not enough for a good model; the README's ISBI commands train for ten.

# %%
if T.isbi is None:
    print("skipped: no ISBI 2012 data (set MINUNET_ISBI2012=/path/to/isbi2012, a folder with "
          "images/ and labels/, and run the tutorial again)")
else:
    isbi_run = work / "isbi"
    isbi_time = T.pick("2m", "15s")
    isbi_args = [*settings[:settings.index("--val-every")], "--data", f"isbi2012:{T.isbi}",
                 "--time", isbi_time, "--out", str(isbi_run)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = minunet.train.main(isbi_args)
    assert status == 0, "ISBI training failed"
    isbi_iters = json.loads((isbi_run / "config.json").read_text())["train"]["iters"]
    isbi = load_dataset(f"isbi2012:{T.isbi}")
    isbi_model = model_from_checkpoint(load_checkpoint(isbi_run / "best.npz"),
                                       isbi_run / "best.npz")
    held_probs = [predict(isbi_model, s.image)[1] for s in isbi.holdout]  # slices 25-29
    held_scores = isbi_metrics.scores_of([isbi_metrics.slice_counts(p, s.label == 1)
                                          for p, s in zip(held_probs, isbi.holdout, strict=True)])
    print(f"ISBI 2012, --time {isbi_time}: {isbi_iters} iterations, "
          f"{time.perf_counter() - start:.0f} s; held-out slices "
          f"{', '.join(s.name for s in isbi.holdout)}: V_rand {held_scores.v_rand:.3f}, "
          f"V_info {held_scores.v_info:.3f}, pixel error {held_scores.pixel_error:.3f}")
    sample = isbi.holdout[0]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, img, title in ((axes[0], sample.image, f"ISBI slice {sample.name} (held out)"),
                           (axes[1], sample.label, "truth"), (axes[2], held_probs[0], "P(cell)")):
        ax.imshow(img, cmap="magma" if ax is axes[2] else "gray")
        ax.set_title(title)
        ax.set_axis_off()
    fig.tight_layout()
    T.figure(fig, "isbi_predictions")
    plt.show()

# %% [markdown]
# ## Does the weight map help? Measured on touching cells
#
# The paper's weight map (tutorial 03) puts a weight of up to $w_0 + w_c \approx 11$ on the
# thin background gaps between touching cells, "to force the network to learn the small
# separation borders" (Sec. 3). Its claim is about *separating touching cells*, so a run on
# the synthetic EM above, scored by pixels, is the wrong test: there the membranes are thick
# and every cell touches its neighbours the same way, and a pixel score hardly sees the few
# pixels that split two cells. The right test is data with touching cells, scored by cells.
#
# `tools/weightmap_experiment.py` does that: on the built-in touching cells
# (`--data cells:n=16,size=384`, images 12-15 held out: never trained on, never used to
# choose), it trains the CPU preset for 1000 iterations with the map and once more with
# `--no-weight-map`, for each of three seeds, and scores the last checkpoint on the held-out
# images by
#
# - **object F1**: cells found from P(cell) (`minunet.inference.instances.label_cells`) matched
#   to the true cells at IoU $\ge 0.5$ (`minunet.evaluation.objects`; tutorial 09), and **SEG**,
#   the mean IoU of each true cell with the predicted cell covering most of it;
# - **border as cell**: of the pixels on the separation borders between touching cells, the
#   fraction predicted as cell, where two cells would merge;
# - **error rate**: the fraction of all pixels classified wrong at 0.5.
#
# It took 14 minutes on 2 CPU cores, too long for this notebook, so here are the numbers it
# measured, one record per run (reproduce them with
# `python tools/weightmap_experiment.py --seeds 0 1 2 --iters 1000 --out weightmap.json`):

# %%
WEIGHTMAP_RUNS = [
    {"seed": 0, "weight_map": True, "f1": 0.7212, "seg": 0.6290,
     "border_as_cell": 0.5555, "pixel_error": 0.0331},
    {"seed": 0, "weight_map": False, "f1": 0.5498, "seg": 0.4908,
     "border_as_cell": 0.8318, "pixel_error": 0.0263},
    {"seed": 1, "weight_map": True, "f1": 0.7547, "seg": 0.6654,
     "border_as_cell": 0.5302, "pixel_error": 0.0223},
    {"seed": 1, "weight_map": False, "f1": 0.5361, "seg": 0.4859,
     "border_as_cell": 0.7643, "pixel_error": 0.0336},
    {"seed": 2, "weight_map": True, "f1": 0.6729, "seg": 0.6015,
     "border_as_cell": 0.5437, "pixel_error": 0.0388},
    {"seed": 2, "weight_map": False, "f1": 0.4561, "seg": 0.4239,
     "border_as_cell": 0.8825, "pixel_error": 0.0273},
]  # tools/weightmap_experiment.py, 3 seeds x 1000 iterations, 2 CPU cores, 14 min

for key, name in (("f1", "object F1"), ("seg", "SEG"), ("border_as_cell", "border as cell"),
                  ("pixel_error", "error rate at 0.5")):
    line = []
    for with_map in (True, False):
        v = np.array([r[key] for r in WEIGHTMAP_RUNS if r["weight_map"] == with_map])
        line.append(f"{'with' if with_map else 'without'} the map {v.mean():.3f} "
                    f"+- {v.std(ddof=1):.3f}")
    print(f"{name:18s} " + ";  ".join(line))

# %% [markdown]
# The map helps where the paper says it does. With it, about 72 % of the held-out cells are
# found (F1 0.72 against 0.51 without) and each true cell is covered better (SEG 0.63 against
# 0.47); without it, 83 % of the separation-border pixels are called cell, so touching cells
# merge, and with it 54 %: still more than half, after 1000 iterations of a small network, but
# enough to split many more pairs. In all three seeds the run with the map is the better one on
# these three scores, and the differences are four to five times the spread of the seeds. The
# pixel error rate is the same within the spread (0.031 +- 0.008 with the map, 0.029 +- 0.004
# without): the border pixels are a tiny fraction of all pixels, so a pixel score cannot see
# what the map does, which is why the earlier run on synthetic EM, scored by pixels and by
# the Rand error of a few validation images, could not show it either.
#
# **Check.** On these records, for object F1, SEG and the border pixels the difference of the
# means exceeds twice the larger standard deviation of the seeds, in favour of the map.

# %%
for key, better in (("f1", 1), ("seg", 1), ("border_as_cell", -1)):
    a = np.array([r[key] for r in WEIGHTMAP_RUNS if r["weight_map"]])
    b = np.array([r[key] for r in WEIGHTMAP_RUNS if not r["weight_map"]])
    gap = better * (a.mean() - b.mean())
    print(f"{key}: difference {gap:+.3f} in favour of the map; spread (larger std) "
          f"{max(a.std(ddof=1), b.std(ddof=1)):.3f}")
    assert gap > 2 * max(a.std(ddof=1), b.std(ddof=1))

# %% [markdown]
# ## Summary
#
# - Momentum 0.99 averages about 100 tiles into each update, so one large tile per step works
#   like a large batch; the learning rate is 100 times smaller to match.
# - A linear warm-up (not in the paper) keeps the first, large gradients from killing ReLUs.
# - `python -m minunet.train` (or `minunet.train.main([...])`) writes a run folder: config,
#   metrics, plots and checkpoints; `--resume` continues a run exactly.
# - On 2 CPU cores, a few hundred iterations of the CPU preset give a model that clearly beats
#   the trivial segmentation on its synthetic EM validation images.
# - Validation images choose the checkpoint; held-out images judge it. The ISBI pixel error
#   (best threshold, F-score) is not 1 - accuracy at 0.5.
# - `--time` trains for a wall-clock budget: it measures its steps, chooses the iterations and
#   lets the learning rate reach zero at the end. ISBI 2012 numbers follow one protocol: train
#   00-22, choose on 23-24, score 25-29.
#
# ## Exercises
#
# **1. Momentum 0.9.** Predict the steady step for a constant gradient $g = 1$ with
# $\eta = 10^{-3}$ and $m = 0.9$, write it into `my_step` and run the cell. Self-check:
# compared with 1000 steps of `MomentumSGD`, to six decimals.

# %%
my_step = None  # your prediction

report(check_steady_step(my_step))

# %% [markdown]
# **2. Resume once more.** Write the options of `minunet.train` that continue the synthetic
# run for another `extra` iterations, as a list like the `args` of the training cell above, into
# `my_resume` (the run folder is `run`; its last iteration is `stages[-1]`). Self-check, before
# anything runs: the run continues from the checkpoint where it stopped and `--iters` is what
# it must be; then the cell trains (100 iterations take about 30 s in full mode) and checks that
# the checkpoint's iteration is the old one plus `extra` and that `metrics.csv` keeps its rows
# and gains rows for the new validations only.

# %%
extra = T.pick(100, 10)
my_resume = None  # your options: a list of strings, e.g. ["--resume", ..., ...]

report(check_resume(my_resume, run, extra, train))

# %% [markdown]
# **3. The difference against the spread.** By how many standard deviations does the mean
# object F1 of the runs with the weight map exceed that of the runs without? Use the pooled
# standard deviation of the seeds, $\sqrt{(s_1^2 + s_2^2)/2}$ (each $s$ over the seeds of one
# setting, with $n - 1$ in the denominator), from the records printed in the weight-map
# section; write it into `my_effect` to one decimal. Self-check: compared with the records, to
# one decimal. Then do the same for the pixel error: which way does it point?

# %%
my_effect = None  # (mean F1 with - mean F1 without) / pooled standard deviation

report(check_effect_size(my_effect, WEIGHTMAP_RUNS))

# %% [markdown]
# ## Cleaning up
#
# The run folders lived in a temporary directory; remove it, so that the tutorial leaves
# nothing behind.

# %%
shutil.rmtree(work)
print(f"removed the temporary run folders: {not work.exists()}")
