"""The Trainer: one run of training, from data to checkpoints (docs/DESIGN.md, "Checkpoints",
"Divergence", "Time budget").

The step (Ronneberger et al. 2015, Sec. 3): one large tile (batch 1), the model's own loss
(the U-Net's: the weighted pixel-wise cross-entropy with the border weight map), momentum 0.99,
elastic deformation. Each iteration k is a pure function of (seed, k): tile k and the dropout
masks of step k, so a resumed run repeats the straight one.

    train_step     one SGD step: forward, the model's loss, backward, update
    Trainer        data, model, optimiser, run folder; run() trains to cfg.iters
    minunet/training/budget.py      --time: measure a step and a validation, choose --iters
    minunet/training/validation.py  whole validation images scored as predict + evaluate do
    minunet/training/legacy.py      settings of older checkpoints brought up to date
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from minunet import backend
from minunet.models import build_model, standardize
from minunet.nn.optim import MomentumSGD, SGDConfig
from minunet.training import checkpoint
from minunet.training.budget import behind_budget, fit_budget
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint
from minunet.training.config import TrainConfig, _flag, model_config, parse_duration
from minunet.training.legacy import migrate_train_settings
from minunet.training.runfolder import RunFolder, out_of_memory_hint
from minunet.training.validation import _best_of, score_of, validate


def train_step(model, opt, x, labels, weights, it: int, key: int):
    """One SGD step on a batch of tiles; returns (loss, gradient norm), two device scalars.

    x: (B, C, tile, tile) standardized images; labels: (B, out, out) class indices;
    weights: (B, out, out) the weight map; it: the iteration (sets the learning rate);
    key: this step's dropout key. The loss is the weighted cross-entropy
    (1/(B*out*out)) * sum_x w(x) * -log p_label(x)(x) (docs/DESIGN.md, "Loss") for the U-Net: the
    loss its config names (`model.loss_forward`), on the same op module (plain or fast) as its
    layers.

    The gradient norm sqrt(sum_k |g_k|^2) is the divergence guard's second number: a finite
    loss does not prove a finite step (a NaN can be masked out on its way to the loss, e.g. by
    a ReLU mask `out > 0`, which is false for NaN, and an update can overflow). It stays on the
    device; the loop reads it with the loss.
    """
    logits = model.forward(x, dropout_key=key)  # (B, K, out, out)
    loss, cache = model.loss_forward(logits, labels, weights)  # the model's own loss
    model.zero_grad()
    model.backward(model.loss_backward(cache))  # dL/dlogits
    grad_norm = sum(g.ravel() @ g.ravel() for g in model.grads.values()) ** 0.5
    opt.step(model.grads, it)
    return loss, grad_norm


def step_key(seed: int, it: int) -> int:
    """The dropout key of iteration `it` (a pure function of seed and iteration)."""
    return (seed * 1_000_003 + it) & 0xFFFFFFFFFFFFFFFF


class Stop(Exception):
    """Training must end early; the message says why."""


class Trainer:
    """Owns one run: data, model, optimiser, run folder; `run()` trains to cfg.iters.

    With cfg.time set, a new run first fits cfg.iters to the budget (`fit_budget`)."""

    # What --resume may change. A resumed run is the same run: these change neither the
    # model, the data nor the results (device: up to float rounding) ...
    RESUMABLE_QUIETLY = ("device", "prefetch")
    # ... and these it applies from the checkpoint's iteration on, saying so
    RESUMABLE_SAID = ("iters", "val_every", "lr", "keep_checkpoints")

    def __init__(self, cfg: TrainConfig, resume: str | None = None, quiet: bool = False,
                 given: set | None = None, overwrite: bool = False):
        """given: the options named on the command line; a resume takes only those of
        RESUMABLE_* from `cfg` and refuses the others where they differ from the saved run
        (None: `cfg` is a whole config, and a resume takes RESUMABLE_* from it).
        overwrite: a new run may replace the run in cfg.out (removing its files)."""
        from minunet.data import AugmentConfig, TileSampler, load_dataset
        from minunet.data.loaders import as_holdout, as_index_list

        self.started = time.monotonic()  # the --time budget counts from here
        self.quiet = quiet
        ckpt = load_checkpoint(resume) if resume else None
        if ckpt is not None:
            cfg, changes = self._resumed_config(ckpt.config, cfg, resume, given)
        self.cfg = cfg
        self.budget = ckpt.config.get("budget") if ckpt is not None else None
        self.machine = backend.machine(cfg.device)  # where this process trains: config.json
        out = Path(cfg.out) if cfg.out else self._new_run_path()
        self.folder = RunFolder(out, new=ckpt is None, overwrite=overwrite)
        self.out = self.folder.path
        if ckpt is not None:
            for change in changes:
                self._say(f"--resume: {change}")
        self._say(f"minunet.train: {backend.device_info()}")
        self._say(json.dumps(asdict(cfg), indent=1))
        self.data = load_dataset(cfg.data, as_index_list(cfg.val), cfg.mask_kind, cfg.normalize,
                                 as_holdout(cfg.holdout))
        self._say(f"data {self.data.source}: {len(self.data.train)} image(s) to train on, "
                  f"{len(self.data.val)} for validation (choosing best.npz)"
                  + (f": {', '.join(s.name for s in self.data.val)}" if self.data.val else "")
                  + ("" if cfg.val else " (choose others with --val)"))
        if self.data.holdout:
            self._say(f"held out, never trained on nor validated (score them with predict and "
                      f"evaluate): {', '.join(s.name for s in self.data.holdout)}"
                      + ("" if cfg.holdout else " (choose others with --holdout)"))
        if ckpt is None:
            self.model = build_model(model_config(cfg, self.data.n_classes), seed=cfg.seed)
        else:  # refuses parameters of another shape, listing them
            self.model = model_from_checkpoint(ckpt, resume, seed=cfg.seed)
        self.model.to(cfg.device).train()
        self.opt = MomentumSGD(self.model.params, SGDConfig(
            lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, max_iter=cfg.iters, warmup=cfg.warmup))
        if ckpt is not None:
            self.opt.load_state_dict(ckpt.velocity)
        self.it = ckpt.iteration if ckpt is not None else 0
        self.resumed_from = self.it
        self.last_saved = self.it if ckpt is not None else None  # iteration of last.npz
        self.skipped, self.validating = 0, 0.0  # validations skipped, seconds spent validating
        # wall-clock seconds of the run before this process (a resumed run carries them on)
        self.elapsed_before = float(ckpt.rng.get("elapsed_s", 0.0)) if ckpt is not None else 0.0
        self.out_size = self.model.geometry.output_size(cfg.tile)
        self._sampler = lambda start: TileSampler(
            self.data.train, cfg.tile, self.out_size, AugmentConfig() if cfg.augment else None,
            seed=cfg.seed, start=start, prefetch=cfg.prefetch, use_weights=cfg.weight_map)
        self.sampler = self._sampler(self.it * cfg.batch)
        # the best validation score so far (best.npz's) and the training loss of every
        # iteration so far: a resumed run carries both on, so that best.npz, metrics.csv and
        # loss.png come out as the straight run's
        self.best = math.inf if ckpt is None else _best_of(ckpt.rng)
        self.train_losses: list[float] = [] if ckpt is None else ckpt.log.get(
            "train_losses", np.zeros(0)).tolist()
        self.val_preds: list = []  # (image, truth, probabilities) of the last validation
        if cfg.time and ckpt is None:
            self.fit_budget(parse_duration(cfg.time))
        self.folder.create(self._config_json(), self.it)  # only now: everything has loaded
        if ckpt is not None and "best_score" not in ckpt.rng:  # written before it was saved
            self.best = min(map(score_of, self.folder.history), default=math.inf)

    @staticmethod
    def _new_run_path() -> Path:
        """runs/<date-time>, or runs/<date-time>-2, -3, ... when a run started that second."""
        stamp = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        return next(p for p in (stamp, *(Path(f"{stamp}-{i}") for i in range(2, 10**6)))
                    if not p.exists())

    @staticmethod
    def _resumed_config(config: dict, cfg: TrainConfig, resume: str,
                        given: set | None = None) -> tuple[TrainConfig, list[str]]:
        """(the checkpoint's training settings with the changes a resume may make, those
        changes in words). The run goes on in the folder of `resume` (RUN/last.npz, or
        RUN/checkpoints/N.npz). An option in `given` that would change the model, the data or
        the schedule is refused, naming each; the others (RESUMABLE_*) apply."""
        saved = config.get("train")
        if not isinstance(saved, dict):
            raise ValueError(f"{resume} holds no training settings (config['train']), so it "
                             "cannot be resumed; give a last.npz from a run folder")
        unknown = sorted(set(saved) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise ValueError(f"{resume}: unknown training settings {', '.join(unknown)}; "
                             "was it written by a newer minunet?")
        saved = migrate_train_settings(saved)  # older runs' settings, brought up to date
        folder = Path(resume).parent
        if folder.name == "checkpoints" and (folder.parent / "config.json").is_file():
            folder = folder.parent  # RUN/checkpoints/N.npz belongs to RUN
        named = {f.name for f in fields(TrainConfig)} if given is None else set(given)
        if "time" in named and given is not None:
            raise ValueError("--time sets the iterations of a new run; a resumed run "
                             "continues to its saved end (give --iters to change it)")
        if "out" in named and given is not None and cfg.out and \
                Path(cfg.out).resolve() != folder.resolve():
            raise ValueError(f"--resume continues the run in its own folder {folder}; drop "
                             f"--out {cfg.out} (to branch off, copy the folder and resume "
                             "the copy's last.npz)")
        refused = [f"{_flag(k)} {getattr(cfg, k)} (the run's: {saved.get(k)})"
                   for k in sorted(named) if given is not None and k in saved
                   and k not in (*Trainer.RESUMABLE_QUIETLY, *Trainer.RESUMABLE_SAID, "out")
                   and getattr(cfg, k) != saved[k]]
        if refused:
            raise ValueError(f"--resume continues the saved run, and {'; '.join(refused)} "
                             f"would change it: drop {'it' if len(refused) == 1 else 'them'}, "
                             "or start a new run with --out")
        take = [k for k in (*Trainer.RESUMABLE_QUIETLY, *Trainer.RESUMABLE_SAID)
                if k in named or k == "device"]
        resumed = TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in take},
                                 "out": str(folder)})
        changes = [f"{_flag(k)} {getattr(resumed, k)} applies from here (the run had "
                   f"{saved.get(k)})" for k in Trainer.RESUMABLE_SAID
                   if k in take and getattr(resumed, k) != saved.get(k)]
        return resumed, changes

    def run(self) -> int:
        cfg = self.cfg
        interrupted = {"n": 0}

        def on_sigint(signum, frame):
            interrupted["n"] += 1
            if interrupted["n"] > 1:
                raise KeyboardInterrupt
        old = signal.signal(signal.SIGINT, on_sigint)
        from tqdm import tqdm

        self.loop_started = time.monotonic()
        bar = tqdm(total=cfg.iters, initial=self.it, desc="train", unit="it",
                   disable=self.quiet or None, dynamic_ncols=True)
        stats = []  # (loss, gradient norm) device scalars, read in batches so the GPU never
        # waits on the host
        try:
            while self.it < cfg.iters:
                with np.errstate(all="ignore"):  # a diverging step is caught below, by value
                    stats.append(self.step())
                self.it += 1
                bar.update(1)
                if (len(stats) >= 10 or self.it % cfg.val_every == 0 or self.it == cfg.iters
                        or interrupted["n"]):
                    vals = self.check_steps(stats)
                    stats.clear()
                    self.train_losses.extend(vals)
                    bar.set_postfix(loss=f"{np.mean(vals):.4f}")
                if self.it % cfg.val_every == 0 or self.it == cfg.iters:
                    if self.it < cfg.iters and self.behind_budget():
                        self.save("last.npz")  # the checkpoint still; the validation waits
                        self.skipped += 1
                    else:
                        t = time.monotonic()
                        self.validate_and_save()
                        self.validating += time.monotonic() - t
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
                hint = out_of_memory_hint(self.model.config, cfg.tile, cfg.batch,
                                          backend.gpu_status().memory_bytes)
                print(f"error: out of GPU memory at tile {cfg.tile}, base {cfg.base}: {hint}",
                      file=sys.stderr)
                return 1
            raise
        finally:
            signal.signal(signal.SIGINT, old)
            self.sampler.close()
        bar.close()
        spent = (f" in {self.elapsed():.0f} s of the {self.budget['seconds']:.0f} s budget"
                 if self.budget else "")
        skipped = (f" ({self.skipped} validation(s) skipped: the steps ran slower than "
                   f"measured)" if self.skipped else "")
        self._say(f"done: {self.it} iterations{spent}{skipped}; run folder {self.out}")
        return 0

    def fit_budget(self, seconds: float) -> None:
        """Set cfg.iters to fit `seconds` (minunet/training/budget.py)."""
        fit_budget(self, seconds)

    def behind_budget(self) -> bool:
        """Whether to skip this validation to end within the budget (training/budget.py)."""
        return behind_budget(self)

    def check_steps(self, stats: list) -> list[float]:
        """The losses of the last len(stats) steps (ending at self.it), read from the device;
        Stop if a loss or a gradient norm is not finite, or the parameters are not (NaN can
        hide behind a finite loss: see train_step). The run then ends with the checkpoints
        of its last validation, which were finite, as saving checks (checkpoint.py)."""
        vals = [(float(loss), float(norm)) for loss, norm in stats]
        first = self.it - len(vals) + 1  # the iteration (1-based) of vals[0]
        for i, (loss, norm) in enumerate(vals):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                self.diverged(first + i, f"the loss was {loss:g} and the gradient norm {norm:g}")
        with np.errstate(all="ignore"):
            xp = self.model.xp
            sums = xp.stack([p.sum(dtype=xp.float64) for p in self.model.params.values()])
            finite = bool(xp.isfinite(sums).all())
        if not finite:
            self.diverged(self.it, "a parameter became NaN or infinite")
        return [loss for loss, _ in vals]

    def diverged(self, it: int, what: str) -> None:
        """Stop the run: training diverged at iteration `it` (1-based), as `what` says."""
        last = self.out / "last.npz"
        kept = [n for n in ("last.npz", "best.npz") if (self.out / n).exists()]
        keeps = (f"{' and '.join(kept)} in {self.out} hold the last finite state "
                 f"(last.npz: iteration {self.last_saved})" if kept else
                 "no checkpoint had been written yet")
        cause = (f"lower --lr (now {self.cfg.lr})" if it > 1 else
                 f"check the input images and labels, or lower --lr (now {self.cfg.lr})")
        raise Stop(f"training diverged at iteration {it}: {what}; {cause}; {keeps}"
                   + (f" (--resume {last} --lr SMALLER continues from it)" if kept else ""))

    def step(self):
        """One training iteration on tile number self.it; returns (loss, gradient norm), device
        scalars (`train_step`)."""
        x, labels, weights = self.sampler.batch(self.cfg.batch)
        dev, dtype = self.cfg.device, self.cfg.dtype
        x = backend.to_device(standardize(x).astype(dtype), dev)  # (B, 1, tile, tile)
        labels = backend.to_device(labels, dev)  # (B, out, out)
        weights = backend.to_device(weights.astype(dtype), dev)  # (B, out, out)
        return train_step(self.model, self.opt, x, labels, weights, self.it,
                          step_key(self.cfg.seed, self.it))

    # -- validation and the run folder ----------------------------------------------

    def validate(self) -> dict:
        """The validation scores (minunet/training/validation.py)."""
        return validate(self)

    def validate_and_save(self, quiet: bool = False) -> None:
        """Validate, log the metrics row, save best.npz if this is the best validation so far,
        then last.npz (which records the best score, so a resumed run knows it)."""
        res = self.validate()
        recent = self.train_losses[-self.cfg.val_every:]
        train_loss = float(np.mean(recent)) if recent else ""
        row = {"iteration": self.it, "elapsed_s": round(self.elapsed(), 2),
               "train_loss_weighted": train_loss, **res}
        self.folder.log(row)
        score = score_of(row)
        if score < self.best:
            self.best = score
            self.save("best.npz")
        self.save("last.npz")
        if self.cfg.keep_checkpoints:
            self.save(f"checkpoints/{self.it:06d}.npz")
        self.folder.plot(self.train_losses, self.it, self.val_preds)
        msg = ", ".join(f"{k} {v:.4f}" for k, v in res.items())
        if not quiet:
            self._say(f"\niteration {self.it}: {msg}")

    def save(self, name: str) -> Path:
        """Write checkpoint `name` of the run folder; Stop instead if a parameter is not finite
        (checkpoint.py refuses it: a checkpoint is never a diverged model)."""
        try:
            path = self._save(name)
        except checkpoint.NonFiniteError:
            self.diverged(self.it, "a parameter became NaN or infinite")
        if name == "last.npz":
            self.last_saved = self.it
        return path

    def _save(self, name: str) -> Path:
        best = None if math.isinf(self.best) else self.best  # JSON has no infinity
        return self.folder.save_checkpoint(
            name, self.model, self.opt, self.it, self._config_json(),
            {"seed": self.cfg.seed, "next_tile": self.it * self.cfg.batch,
             "dropout_key": "step_key(seed, iteration)", "elapsed_s": round(self.elapsed(), 3),
             "best_score": best},
            log={"train_losses": np.array(self.train_losses, np.float64)})

    def elapsed(self) -> float:
        """Wall-clock seconds of this run so far, earlier processes of a resumed run included."""
        return self.elapsed_before + time.monotonic() - self.started

    def _config_json(self) -> dict:
        budget = {"budget": self.budget} if self.budget else {}  # what --time measured and chose
        return {"train": asdict(self.cfg), "model": asdict(self.model.config),
                "optimizer": self.opt.config_dict(), **budget, "machine": self.machine}

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)
