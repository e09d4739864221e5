"""Train a U-Net: `python -m minunet.train` (see --help).

With no arguments it trains on the built-in synthetic EM data, on the GPU when
CuPy sees one (the paper configuration) and otherwise on the CPU (a smaller
preset that finishes in minutes on a laptop). Every run writes a folder:

    config.json       the resolved settings
    metrics.csv       iteration, train loss, validation loss, pixel accuracy, Rand error
    loss.png          the loss curves
    val_predictions.png   validation images, truth and prediction side by side
    last.npz best.npz checkpoints (see minunet/checkpoint.py); --resume continues exactly

The step (Ronneberger et al. 2015, Sec. 3): one large tile (batch 1), the
weighted pixel-wise cross-entropy with the border weight map, momentum 0.99,
elastic deformation. Each iteration k is a pure function of (seed, k): tile k
and the dropout masks of step k, so a resumed run repeats the straight one.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import backend, ops
from .checkpoint import load_checkpoint, save_checkpoint
from .files import atomic_write
from .model import (
    UNet,
    UNetConfig,
    describe,
    invalid_size_message,
    is_valid_size,
    output_size,
    standardize,
)
from .optim import MomentumSGD, SGDConfig

# Presets: what suits the device. "cpu" finishes in minutes on 2 cores and is
# already good on the synthetic data; "paper" is the paper's network and tile.
PRESETS = {
    "cpu": dict(base=16, depth=4, tile=316, iters=1500, lr=0.001, val_every=300, prefetch=0,
                data="synthetic:n=16,size=384"),
    "paper": dict(base=64, depth=4, tile=572, iters=5000, lr=0.001, val_every=500,
                  data="synthetic"),
    "tiny": dict(base=4, depth=4, tile=188, iters=20, lr=0.001, val_every=10, prefetch=0,
                 data="synthetic:n=3,size=200"),
}


@dataclass
class TrainConfig:
    data: str = "synthetic"  # synthetic | synthetic:n=..,size=.. | isbi2012:PATH | folder:PATH
    val: str = ""  # held-out slices: '25,26,27', a fraction '0.2' or a count '5'; '' = default
    device: str = "auto"  # auto | cpu | cuda
    preset: str = ""  # cpu | paper | tiny; '' = by device
    base: int = 64  # channels at level 0 (paper 64)
    depth: int = 4  # poolings (paper 4)
    tile: int = 572  # input tile side (paper 572 -> 388 output)
    batch: int = 1  # tiles per step (paper 1: "a large input tile over a large batch size")
    iters: int = 5000  # total iterations (a resumed run stops where the straight run would)
    lr: float = 0.01  # base learning rate
    momentum: float = 0.99  # paper 0.99
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | poly
    warmup: int = 100  # iterations of linear lr warm-up (see optim.py; 0 = none, as the paper)
    dropout: float = 0.5  # paper 0.5
    upconv_relu: bool = False
    augment: bool = True  # elastic deformation, shift, rotation, flips, gray values
    weight_map: bool = True  # the paper's border weight map (else all ones)
    seed: int = 0
    val_every: int = 500  # iterations between validations and checkpoints
    out: str = ""  # run folder; '' = runs/<time>
    dtype: str = "float32"
    prefetch: int = 2  # tiles prepared by a background thread (0 on the CPU: it competes for cores)


def parse_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m minunet.train",
        description="Train the U-Net of Ronneberger et al. (2015) with hand-written backprop.")
    p.add_argument("--data", help="synthetic (default) | synthetic:n=30,size=512 | "
                   "isbi2012:PATH | folder:PATH")
    p.add_argument("--val", help="held-out slices: indices '25,26', fraction '0.2' or count '5'")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--preset", choices=sorted(PRESETS), help="defaults for a device "
                   "(cpu: base 16, tile 252; paper: base 64, tile 572); chosen by device if unset")
    for name, typ in [("base", int), ("depth", int), ("tile", int), ("batch", int),
                      ("iters", int), ("lr", float), ("momentum", float),
                      ("weight-decay", float), ("dropout", float), ("seed", int),
                      ("val-every", int), ("prefetch", int), ("warmup", int)]:
        p.add_argument("--" + name, type=typ)
    p.add_argument("--schedule", choices=["constant", "step", "poly"])
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--out", help="run folder (default runs/<date-time>)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (last.npz)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument("--no-weight-map", dest="weight_map", action="store_false", default=None)
    p.add_argument("--upconv-relu", action="store_true", default=None)
    p.add_argument("--describe", action="store_true",
                   help="print the per-layer table (shapes, parameters, GFLOP, memory) and exit")
    a = p.parse_args(argv)
    given = {f.name: getattr(a, f.name) for f in fields(TrainConfig)
             if getattr(a, f.name, None) is not None}
    return resolve_config(given), a


def resolve_config(given: dict) -> TrainConfig:
    """Defaults < preset (by device unless named) < options given."""
    device = backend.resolve_device(given.get("device", "auto"))
    preset = given.get("preset") or ("paper" if device == "cuda" else "cpu")
    merged = {**PRESETS[preset], **given, "preset": preset, "device": device}
    cfg = TrainConfig(**merged)
    if not is_valid_size(cfg.tile, cfg.depth):
        raise SystemExit(f"error: --tile: {invalid_size_message(cfg.tile, cfg.depth)}")
    for name in ("iters", "batch", "val_every", "base", "depth"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    return cfg


def model_config(cfg: TrainConfig, n_classes: int, in_channels: int = 1) -> UNetConfig:
    return UNetConfig(in_channels=in_channels, n_classes=n_classes, depth=cfg.depth,
                      base=cfg.base, dropout=cfg.dropout, upconv_relu=cfg.upconv_relu,
                      dtype=cfg.dtype)


def step_key(seed: int, it: int) -> int:
    """The dropout key of iteration `it` (a pure function of seed and iteration)."""
    return (seed * 1_000_003 + it) & 0xFFFFFFFFFFFFFFFF


class Stop(Exception):
    """Training must end early; the message says why."""


def main(argv=None) -> int:
    cfg, args = parse_args(argv)
    if args.describe:
        print(describe(model_config(cfg, 2), cfg.tile, cfg.batch))
        return 0
    try:
        trainer = Trainer(cfg, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:  # bad data, path or checkpoint: say so plainly
        print(f"error: {e}", file=sys.stderr)
        return 2
    return trainer.run()


class Trainer:
    """Owns one run: data, model, optimiser, run folder; `run()` trains to cfg.iters."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, quiet: bool = False):
        from .data import AugmentConfig, TileSampler, load_dataset
        from .data.loaders import as_index_list

        self.quiet = quiet
        start, state = 0, None
        if resume:
            params, velocity, start, saved, rng = load_checkpoint(resume)
            keep = {"device", "iters", "out", "val_every", "prefetch"}  # what a resume may change
            cfg = TrainConfig(**{**saved["train"], **{k: getattr(cfg, k) for k in keep}})
            if not cfg.out:
                cfg.out = str(Path(resume).parent)
            state = (params, velocity, saved["model"])
        self.cfg = cfg
        self._say(f"minunet.train: {backend.device_info()}")
        self._say(json.dumps(asdict(cfg), indent=1))
        self.data = load_dataset(cfg.data, as_index_list(cfg.val) if cfg.val else None)
        self.out = Path(cfg.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
        self.out.mkdir(parents=True, exist_ok=True)  # only once the data is known to load
        n_classes = self.data.n_classes
        mcfg = model_config(cfg, n_classes) if state is None else UNetConfig(**state[2])
        self.model = UNet(mcfg, seed=cfg.seed)
        if state is not None:  # refuses parameters of another shape, listing them
            self.model.load_state_dict(state[0])
        self.model.to(cfg.device)
        self.opt = MomentumSGD(self.model.params, SGDConfig(
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, max_iter=cfg.iters, warmup=cfg.warmup))
        if state is not None:
            self.opt.load_state_dict(state[1])
        self.it = start
        self.out_size = output_size(cfg.tile, cfg.depth)
        self.sampler = TileSampler(self.data.train, cfg.tile, self.out_size,
                                   AugmentConfig() if cfg.augment else None, seed=cfg.seed,
                                   start=start * cfg.batch, prefetch=cfg.prefetch,
                                   use_weights=cfg.weight_map)
        self.best = math.inf
        self.train_losses: list[float] = []  # per iteration, this process's iterations only
        self.history = self._read_history()
        (self.out / "config.json").write_text(json.dumps(self._config_json(), indent=2))

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        interrupted = {"n": 0}

        def on_sigint(signum, frame):
            interrupted["n"] += 1
            if interrupted["n"] > 1:
                raise KeyboardInterrupt
        old = signal.signal(signal.SIGINT, on_sigint)
        from tqdm import tqdm

        bar = tqdm(total=cfg.iters, initial=self.it, desc="train", unit="it",
                   disable=self.quiet or None, dynamic_ncols=True)
        losses = []  # device scalars, read in batches so the GPU never waits on the host
        try:
            while self.it < cfg.iters:
                with np.errstate(all="ignore"):  # a diverging loss is caught below, by value
                    losses.append(self.step())
                self.it += 1
                bar.update(1)
                if len(losses) >= 10 or self.it % cfg.val_every == 0 or self.it == cfg.iters:
                    vals = [float(v) for v in losses]
                    losses.clear()
                    if not all(math.isfinite(v) for v in vals):
                        raise Stop(f"the loss became {vals[-1]} at iteration {self.it}: training "
                                   f"diverged. Lower --lr (now {cfg.lr}); the last good "
                                   f"checkpoint is {self.out / 'last.npz'}")
                    self.train_losses.extend(vals)
                    bar.set_postfix(loss=f"{np.mean(vals):.4f}")
                if self.it % cfg.val_every == 0 or self.it == cfg.iters:
                    self.validate_and_save()
                if interrupted["n"]:
                    self.save("last.npz")
                    bar.close()
                    self._say(f"\ninterrupted at iteration {self.it}; saved "
                              f"{self.out / 'last.npz'} (continue with --resume)")
                    return 130
        except Stop as e:
            bar.close()
            print(f"error: {e}", file=sys.stderr)
            return 1
        except Exception as e:
            if backend.is_out_of_memory(e):
                bar.close()
                print(f"error: out of GPU memory at tile {cfg.tile}, base {cfg.base}: "
                      f"{self._fit_hint()}", file=sys.stderr)
                return 1
            raise
        finally:
            signal.signal(signal.SIGINT, old)
            self.sampler.close()
        bar.close()
        self._say(f"done: {self.it} iterations; run folder {self.out}")
        return 0

    def step(self):
        """One training iteration on tile number self.it; returns the loss (device scalar)."""
        x, labels, weights = self.sampler.batch(self.cfg.batch)
        dev = self.cfg.device
        x = backend.to_device(standardize(x).astype(self.cfg.dtype), dev)  # (B, 1, tile, tile)
        labels = backend.to_device(labels, dev)  # (B, out, out)
        weights = backend.to_device(weights.astype(self.cfg.dtype), dev)  # (B, out, out)
        m = self.model
        logits = m.forward(x, dropout_key=step_key(self.cfg.seed, self.it))
        loss, cache = ops.softmax_cross_entropy_forward(logits, labels, weights)
        m.zero_grad()
        m.backward(ops.softmax_cross_entropy_backward(1.0, cache))
        self.opt.step(m.grads, self.it)
        return loss

    # -- validation, checkpoints, plots ---------------------------------------------

    def validate(self) -> dict:
        """Whole validation images by overlap-tile inference: loss, pixel accuracy, Rand error."""
        from .infer import predict
        from .metrics import rand_error

        if not self.data.val:
            return {}
        losses, correct, total, rands, self.val_preds = [], 0, 0, [], []
        for s in self.data.val:
            probs = backend.to_host(predict(self.model, s.image))  # (K, H, W)
            p_true = np.take_along_axis(probs, s.label[None], axis=0)[0]
            losses.append(float(-np.log(np.maximum(p_true, 1e-12)).mean()))
            pred = probs.argmax(0)
            correct += int((pred == s.label).sum())
            total += s.label.size
            if self.data.n_classes == 2:
                rands.append(rand_error(probs[1], s.label == 1))
            self.val_preds.append((s.image, s.label, probs))
        res = {"val_loss": float(np.mean(losses)), "pixel_accuracy": correct / total}
        if rands:
            res["rand_error"] = float(np.mean(rands))
        return res

    def validate_and_save(self) -> None:
        res = self.validate()
        recent = self.train_losses[-self.cfg.val_every:]
        row = {"iteration": self.it, "train_loss": float(np.mean(recent)) if recent else "",
               "val_loss": res.get("val_loss", ""), "pixel_accuracy": res.get("pixel_accuracy", ""),
               "rand_error": res.get("rand_error", "")}
        self.history.append(row)
        self._write_metrics()
        self.save("last.npz")
        score = res.get("val_loss", row["train_loss"] or math.inf)
        if score < self.best:
            self.best = score
            self.save("best.npz")
        self._plot()
        msg = ", ".join(f"{k} {v:.4f}" for k, v in res.items())
        self._say(f"\niteration {self.it}: {msg}")

    def save(self, name: str) -> Path:
        return save_checkpoint(self.out / name, self.model.state_dict(), self.opt.state_dict(),
                               self.it, self._config_json(),
                               {"seed": self.cfg.seed, "next_tile": self.it,
                                "dropout_key": "step_key(seed, iteration)"})

    def _config_json(self) -> dict:
        return {"train": asdict(self.cfg), "model": asdict(self.model.config),
                "optimizer": self.opt.config_dict()}

    def _read_history(self) -> list[dict]:
        path = self.out / "metrics.csv"
        if not path.exists():
            return []
        with open(path) as f:
            return [r for r in csv.DictReader(f) if int(r["iteration"]) <= self.it]

    def _write_metrics(self) -> None:
        def write(f):
            text = io.StringIO()
            w = csv.DictWriter(text, ["iteration", "train_loss", "val_loss", "pixel_accuracy",
                                      "rand_error"])
            w.writeheader()
            w.writerows(self.history)
            f.write(text.getvalue().encode())

        atomic_write(self.out / "metrics.csv", write)

    def _plot(self) -> None:
        from .plots import plot_loss, plot_predictions

        plot_loss(self.history, self.train_losses, self.it,
                  self.out / "loss.png")
        if getattr(self, "val_preds", None):
            plot_predictions(self.val_preds[:3], self.out / "val_predictions.png")

    def _fit_hint(self) -> str:
        from .model import layer_table

        free = backend.gpu_status().memory_bytes
        for base in (self.cfg.base, 32, 16, 8):
            for tile in (572, 508, 444, 380, 316, 252, 188):
                if tile > self.cfg.tile and base == self.cfg.base:
                    continue
                c = model_config(self.cfg, 2)
                c.base = base
                need = 3 * sum(r["act_mb"] for r in layer_table(c, tile, self.cfg.batch)) * 2**20
                if need < 0.6 * free:
                    return f"try --tile {tile} --base {base} (needs about {need / 2**30:.1f} GiB)"
        return "try a smaller --tile and --base, or --device cpu"

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


if __name__ == "__main__":
    sys.exit(main())
