"""Figures of a training run (matplotlib, Agg: files only, no window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minunet.files import save_figure


def _figure(*args, **kw):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    return Figure(*args, **kw)


def plot_loss(history: list[dict], train_losses: list[float], last_it: int, path) -> Path:
    """Two different quantities on one log axis (training/runfolder.py, COLUMNS): the training
    loss per iteration (raw and smoothed), the weighted cross-entropy of training tiles with
    dropout on, and at each validation row the plain cross-entropy of the whole held-out images
    with dropout off (`val_xent`). history: metrics rows; train_losses: the losses of the
    iterations ending at `last_it`."""
    fig = _figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    if train_losses:
        y = np.asarray(train_losses)
        x = np.arange(last_it - len(y), last_it) + 1
        ax.plot(x, y, color="0.75", lw=0.8, label="train: weighted cross-entropy (per iteration)")
        k = max(1, len(y) // 30)
        if k > 1:
            ys = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(x[k - 1:], ys, color="C0", lw=1.5, label=f"train: {k}-iteration mean")
    val = [(int(r["iteration"]), float(r["val_xent"])) for r in history if r.get("val_xent") != ""]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="C1",
                label="validation: cross-entropy, unweighted (whole images, no dropout)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss per pixel")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_predictions(items, path) -> Path:
    """Rows of (image (H, W), truth (H, W), probabilities (K, H, W)): input, truth, P(class 1)."""
    fig = _figure(figsize=(9, 3 * len(items)), dpi=100)
    for r, (image, truth, probs) in enumerate(items):
        for c, (img, title, cmap) in enumerate([(image, "input", "gray"),
                                                (truth, "truth", "gray"),
                                                (probs[1], "prediction P(cell)", "magma")]):
            ax = fig.add_subplot(len(items), 3, 3 * r + c + 1)
            ax.imshow(img, cmap=cmap, vmin=0, vmax=max(1, int(np.max(truth))) if c == 1 else 1)
            ax.set_title(title)
            ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)
