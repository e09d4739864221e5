"""A training run's folder: what `python -m minunet.train` writes there and reads back.

    config.json           the resolved settings: {"train": ..., "model": ..., "optimizer": ...}
    metrics.csv           one row per validation, the columns of COLUMNS (elapsed_s: wall-clock
                          seconds since the run started, earlier processes of a resumed run
                          included)
    loss.png              the training and validation losses (minunet/training/plots.py)
    val_predictions.png   validation images, truth and prediction side by side
    last.npz, best.npz    checkpoints (minunet/training/checkpoint.py); --resume continues exactly
    checkpoints/N.npz     with --keep-checkpoints, the checkpoint of each validation
    curve.csv, curve.png  written by python -m minunet.curve: held-out scores of those

Every file is written atomically (minunet/files.py). The trainer creates the folder only once
the options are valid, the data has loaded and the model is built, so a run that cannot start
leaves nothing behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

from minunet.files import atomic_write_text, check_writable
from minunet.training.checkpoint import save_checkpoint

# The two losses are different quantities, and their names say which:
#   train_loss_weighted  the loss SGD minimises, averaged over the iterations since the last
#                        row: cross-entropy weighted by the weight map (all ones with
#                        --no-weight-map) on augmented training tiles, dropout on;
#   val_xent             the plain cross-entropy, mean -log p(true class) over every pixel of
#                        the whole validation images, dropout off.
# pixel_error, rand_error, v_rand and v_info are the ISBI 2012 scores of the validation images
# (two-class models), as `python -m minunet.evaluate` computes them; best.npz is the checkpoint of
# the lowest pixel_error (minunet/training/trainer.py, Trainer.validate_and_save, by
# minunet/training/validation.py's score_of).
# Validation is not weighted as well: its number should measure the segmentation a user gets,
# comparable between runs with and without the weight map, rather than mostly the thin borders
# between cells that the weight map (w0 = 10) emphasises.
COLUMNS = ("iteration", "elapsed_s", "train_loss_weighted", "val_xent", "pixel_accuracy",
           "pixel_error", "rand_error", "v_rand", "v_info")
_RENAMED = {"train_loss": "train_loss_weighted", "val_loss": "val_xent"}  # older run folders


# What a run writes (and --overwrite removes): the files above and checkpoints/
RUN_FILES = ("config.json", "metrics.csv", "loss.png", "val_predictions.png", "last.npz",
             "best.npz", "curve.csv", "curve.png")


class RunFolder:
    """The files of one run under `path`; `history` holds the rows of metrics.csv.

    new=True (a new run): a folder that already holds a run is refused, unless `overwrite`,
    and then its run files are removed when the run is created; a folder holding other files
    is refused. new=False: the folder of a resumed run, which goes on in it."""

    def __init__(self, path, new: bool = True, overwrite: bool = False):
        self.path = Path(path)
        self.history: list[dict] = []
        self.replace = False  # remove an earlier run's files on create()
        check_writable(self.path, "--out")
        if not new or not self.path.exists():
            return
        held = sorted(p.name for p in self.path.iterdir())
        if any(name in RUN_FILES or name == "checkpoints" for name in held):
            if not overwrite:
                raise ValueError(f"--out {self.path} holds a run already ({', '.join(held[:4])}"
                                 f"{', ...' if len(held) > 4 else ''}): continue it with --resume "
                                 f"{self.path / 'last.npz'}, replace it with --overwrite, or "
                                 "name a new folder")
            self.replace = True
        elif held:
            raise ValueError(f"--out {self.path} is not empty and holds no minunet run "
                             f"({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}): "
                             "name a new or empty folder")

    def create(self, config: dict, iteration: int) -> None:
        """Make the folder (first removing an earlier run's files if it replaces one), remove
        the temporary files of writes that were killed, write config.json, and keep the
        metrics rows up to `iteration` (a resumed run drops the rows it will repeat)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {self.path}: cannot create it ({e.strerror})") from None
        if self.replace:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        for stale in [*self.path.glob(".*.tmp"), *self.path.glob("checkpoints/.*.tmp")]:
            stale.unlink(missing_ok=True)  # left by a write that was killed (files.py)
        self.write_config(config)
        metrics = self.path / "metrics.csv"
        if metrics.exists():
            with open(metrics, newline="") as f:
                rows = [{_RENAMED.get(k, k): v for k, v in r.items()} for r in csv.DictReader(f)]
            self.history = [r for r in rows if int(r["iteration"]) <= iteration]

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2))

    def log(self, row: dict) -> None:
        """Add one row (keys of COLUMNS; missing values are left empty) and rewrite metrics.csv."""
        self.history.append({k: row.get(k, "") for k in COLUMNS})
        text = io.StringIO()
        w = csv.DictWriter(text, COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.path / "metrics.csv", text.getvalue())

    def save_checkpoint(self, name: str, model, opt, iteration: int, config: dict,
                        rng: dict, log: dict | None = None) -> Path:
        """Write `name` (last.npz, best.npz): the model's parameters, buffers and
        architecture, the optimiser's velocities, the iteration, config, RNG state and `log`
        (the training losses so far)."""
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)  # checkpoints/N.npz
        state = model.state_dict()  # parameters and buffers, host arrays
        buffers = {k: state.pop(k) for k in model.buffers}
        return save_checkpoint(self.path / name, state, opt.state_dict(), iteration, config,
                               rng, buffers=buffers, arch=model.arch, log=log)

    def plot(self, train_losses: list[float], iteration: int, val_preds: list) -> None:
        """loss.png from the history and the per-iteration training losses ending at
        `iteration`; val_predictions.png from up to three (image, truth, probabilities)."""
        from minunet.training.plots import plot_loss, plot_predictions

        plot_loss(self.history, train_losses, iteration, self.path / "loss.png")
        if val_preds:
            plot_predictions(val_preds[:3], self.path / "val_predictions.png")


def out_of_memory_hint(config, tile: int, batch: int, free_bytes: int) -> str:
    """A --tile/--base that should fit in `free_bytes` of GPU memory (config: the model's
    UNetConfig), from the layer table's activation sizes; the largest that fits first."""
    from minunet.models.unet import layer_table

    for base in (config.base, 32, 16, 8):
        for t in (572, 508, 444, 380, 316, 252, 188):
            if t > tile and base == config.base:
                continue
            rows = layer_table(dataclasses.replace(config, base=base), t, batch)
            need = 3 * sum(r["act_mb"] for r in rows) * 2**20  # rule of thumb: 3x activations
            if need < 0.6 * free_bytes:
                return f"try --tile {t} --base {base} (needs about {need / 2**30:.1f} GiB)"
    return "try a smaller --tile and --base, or --device cpu"
