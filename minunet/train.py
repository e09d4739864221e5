"""Train a U-Net: `python -m minunet.train` (see --help).

With no arguments it trains on the built-in synthetic EM data, on the GPU when
CuPy sees one (the paper configuration) and otherwise on the CPU (a smaller
preset that finishes in minutes on a laptop). Every run writes a folder
(minunet/training/runfolder.py): config.json, metrics.csv, loss.png, val_predictions.png,
and the checkpoints last.npz and best.npz; --resume continues exactly.

The step (Ronneberger et al. 2015, Sec. 3): one large tile (batch 1), the
weighted pixel-wise cross-entropy with the border weight map, momentum 0.99,
elastic deformation. Each iteration k is a pure function of (seed, k): tile k
and the dropout masks of step k, so a resumed run repeats the straight one.

Read top-down: `train_step`, the options (TrainConfig: each field's comment is
its --help), the command line, then the Trainer's loop.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import math
import re
import signal
import sys
import tempfile
import time
import tokenize
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from minunet import backend
from minunet.models.sizes import invalid_size_message, is_valid_size, output_size
from minunet.models.unet import UNetConfig, build_model, describe, standardize
from minunet.nn.layers import op_module
from minunet.nn.optim import MomentumSGD, SGDConfig
from minunet.training import checkpoint
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint
from minunet.training.runfolder import RunFolder, out_of_memory_hint


def train_step(model, opt, x, labels, weights, it: int, key: int):
    """One SGD step on a batch of tiles; returns (loss, gradient norm), two device scalars.

    x: (B, C, tile, tile) standardized images; labels: (B, out, out) class indices;
    weights: (B, out, out) the weight map; it: the iteration (sets the learning rate);
    key: this step's dropout key. The loss is the weighted cross-entropy
    (1/(B*out*out)) * sum_x w(x) * -log p_label(x)(x) (docs/DESIGN.md, "Loss"), computed by
    the same op module (plain or fast) as the model's layers.

    The gradient norm sqrt(sum_k |g_k|^2) is the divergence guard's second number: a finite
    loss does not prove a finite step (a NaN can be masked out on its way to the loss, e.g. by
    a ReLU mask `out > 0`, which is false for NaN, and an update can overflow). It stays on the
    device; the loop reads it with the loss.
    """
    xent = op_module(model.config.ops)
    logits = model.forward(x, dropout_key=key)  # (B, K, out, out)
    loss, cache = xent.softmax_cross_entropy_forward(logits, labels, weights)
    model.zero_grad()
    model.backward(xent.softmax_cross_entropy_backward(1.0, cache))  # dL/dlogits
    grad_norm = sum(g.ravel() @ g.ravel() for g in model.grads.values()) ** 0.5
    opt.step(model.grads, it)
    return loss, grad_norm


def step_key(seed: int, it: int) -> int:
    """The dropout key of iteration `it` (a pure function of seed and iteration)."""
    return (seed * 1_000_003 + it) & 0xFFFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------- options

# Presets: what suits the device. "cpu" finishes in minutes on 2 cores and is
# already good on the synthetic data; "paper" is the paper's network and tile;
# "tiny" is a smoke test of a few seconds.
# The cpu preset is the recipe that uses ten minutes of 2 cores best on ISBI 2012 (README,
# "ISBI 2012 in ten minutes on a CPU"): many cheap steps beat few large ones, so base 8 (paper
# 64) and tile 316 (paper 572), ~0.08 s a step; learning rate 0.002 after a 100-iteration
# warm-up, decaying to 0 at the last iteration (poly); no dropout (paper 0.5: in minutes the
# network underfits, and the regulariser only slows it); momentum 0.99, batch 1, the weight
# map and elastic deformation as in the paper.
PRESETS = {
    "cpu": dict(base=8, depth=4, tile=316, iters=3000, lr=0.002, schedule="poly", dropout=0.0,
                val_every=500, prefetch=0, data="synthetic:n=16,size=384"),
    "paper": dict(base=64, depth=4, tile=572, iters=5000, lr=0.001, val_every=500,
                  data="synthetic"),
    "tiny": dict(base=4, depth=4, tile=188, iters=20, lr=0.001, val_every=10, prefetch=0,
                 data="synthetic:n=3,size=200"),
}
CHOICES = {"device": ("auto", "cpu", "cuda"), "preset": ("", *PRESETS),
           "schedule": ("constant", "step", "poly"), "dtype": ("float32", "float64"),
           "ops": ("fast", "plain"), "mask_kind": ("binary", "classes", "instances")}


@dataclass
class TrainConfig:
    """The training options. Each field's comment is its --help text (`field_help`)."""

    data: str = "synthetic"  # synthetic | synthetic:n=30,size=512,seed=0 | cells[:n=..,size=..]
    # | isbi2012:PATH (ISBI 2012 slices or stacks) | folder:PATH (images/ + masks/ or labels/)
    mask_kind: str = "binary"  # what the masks of folder:PATH hold: binary (one value = cell)
    # | classes (class indices 0..K-1: a K-class model) | instances (an id per cell, 0 =
    # background: separation borders between touching cells and the paper's weight map)
    normalize: str = "auto"  # how images become [0, 1]: auto (8-bit / 255; 16- and 32-bit:
    # percentiles 1 and 99.8) | max (divide by the type's maximum) | percentile:LO,HI; saved in
    # the checkpoint, so predict and export do the same
    val: str = ""  # validation images, which choose best.npz: indices '23,24', a fraction
    # '0.2' or a count '5'; unset (''): the source's default (ISBI 2012: 23-24 of 30)
    holdout: str = ""  # labelled images kept out of training and validation, to score
    # afterwards with predict and evaluate: indices '25,26', a range '25-29' or 'none'; unset
    # (''): the source's default (ISBI 2012: the last sixth, 25-29 of 30; other data: none)
    device: str = "auto"  # auto (the GPU if CuPy sees one) | cpu | cuda
    preset: str = ""  # a set of defaults, by device when unset: paper on a GPU, else cpu
    base: int = 64  # channels at level 0, doubling per level (paper 64)
    depth: int = 4  # poolings (paper 4)
    tile: int = 572  # input tile side, a valid size (paper 572 -> 388 output)
    batch: int = 1  # tiles per step (paper 1: "a large input tile over a large batch size")
    iters: int = 5000  # total iterations (a resumed run stops where the straight run would)
    time: str = ""  # a time budget instead of --iters: '10m', '90s', '1h', '1h30m'. After a
    # short warm-up it measures a step and a validation, then sets --iters (written to
    # config.json: repeat the run with --iters N) so that training, validations and checkpoints
    # end within the budget; the learning rate decays to 0 at its end (--schedule poly unless
    # given)
    lr: float = 0.01  # base learning rate, > 0
    momentum: float = 0.99  # SGD momentum in [0, 1) (paper 0.99)
    weight_decay: float = 0.0  # L2 weight decay, >= 0 (paper none)
    schedule: str = "constant"  # learning-rate schedule after warm-up (see minunet/nn/optim.py)
    warmup: int = 100  # iterations of linear learning-rate warm-up (0 = none, as the paper)
    dropout: float = 0.5  # drop probability at the end of the contracting path, in [0, 1)
    upconv_relu: bool = False  # a ReLU after each up-conv (the released model had one)
    augment: bool = True  # elastic deformation, shift, rotation, flips, gray values
    weight_map: bool = True  # the paper's border weight map (else all weights 1)
    seed: int = 0  # seed of the initial weights, tiles and dropout masks, >= 0
    val_every: int = 500  # iterations between validations and checkpoints
    keep_checkpoints: bool = False  # also keep each validation's checkpoint as
    # RUN/checkpoints/ITERATION.npz (python -m minunet.curve scores them: the learning curve)
    out: str = ""  # run folder; unset (''): runs/<date-time>
    dtype: str = "float32"  # float32 trains; float64 for checks
    prefetch: int = 2  # tiles prepared by a background thread (0 on the CPU: it competes
    # for the cores)
    ops: str = "fast"  # fast: chunked, threaded, fused ops (minunet/fast); plain: the lesson's
    # whole-array ops (minunet/ops), slower

    def __post_init__(self):
        check_config(self)


RULES = {  # option: (is the value valid?, what it must be)
    **{k: (lambda v: v >= 1, "an integer >= 1")
       for k in ("base", "depth", "batch", "iters", "val_every")},
    **{k: (lambda v: v >= 0, "an integer >= 0") for k in ("warmup", "seed", "prefetch")},
    "lr": (lambda v: 0 < v < math.inf, "a number > 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a number >= 0"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def check_config(cfg: TrainConfig) -> None:
    """ValueError naming the option and what it must be, for the first invalid setting."""
    from minunet.data.loaders import as_holdout, as_index_list, parse_normalize

    for name, (ok, want) in RULES.items():
        if not ok(getattr(cfg, name)):
            raise ValueError(f"{_flag(name)} must be {want}, got {getattr(cfg, name)}")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{_flag(name)} must be one of {', '.join(filter(None, allowed))}, "
                             f"got {getattr(cfg, name)!r}")
    if not is_valid_size(cfg.tile, cfg.depth):
        raise ValueError(f"--tile: {invalid_size_message(cfg.tile, cfg.depth)}")
    as_index_list(cfg.val)  # DataError (a ValueError) if --val cannot be read
    as_holdout(cfg.holdout)  # likewise --holdout
    if cfg.time:
        parse_duration(cfg.time)  # likewise --time
    parse_normalize(cfg.normalize)  # likewise for --normalize


def parse_duration(text: str) -> float:
    """'10m' -> 600.0, '90s' -> 90.0, '1h30m' -> 5400.0, '2.5m' -> 150.0; ValueError else."""
    parts = re.findall(r"(\d+(?:\.\d*)?)\s*([hms])", text.strip().lower())
    rebuilt = "".join(f"{n}{u}" for n, u in parts)
    if not parts or rebuilt != re.sub(r"\s+", "", text.strip().lower()):
        raise ValueError(f"--time {text!r} not understood: give a duration such as 90s, 10m, "
                         "1h or 1h30m")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"--time must be more than 0 seconds, got {text!r}")
    if seconds > MAX_TIME_S:
        raise ValueError(f"--time {text!r} is {seconds / 86400:,.0f} days; the most is "
                         f"{MAX_TIME_S // 86400} days (a longer run: --iters N)")
    return seconds


MAX_TIME_S = 366 * 86400  # --time beyond a year is a typo, not a plan


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_help(cls) -> dict[str, str]:
    """{field: its comment} read from the source of the dataclass `cls`: the comment after a
    field, continued on the comment-only lines right below it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    helps, name, last = {}, None, -1
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        code, text = lines[row - 1][:col], tok.string.lstrip("#").strip()
        m = re.match(r"\s*(\w+)\s*:", code)
        if m:
            name, helps[m.group(1)] = m.group(1), text
        elif name and not code.strip() and row == last + 1:
            helps[name] += " " + text
        else:
            name = None
        last = row
    return helps


def _defaults(name: str) -> str:
    """'; presets: cpu 16, paper 64, tiny 4' for an option the presets set (', else X' where
    some do not), '; default X' for the others, '' for an empty default."""
    default = next(f.default for f in fields(TrainConfig) if f.name == name)
    by_preset = [f"{p} {v[name]}" for p, v in PRESETS.items() if name in v]
    if by_preset:
        rest = f", else {default}" if len(by_preset) < len(PRESETS) else ""
        return f"; presets: {', '.join(by_preset)}{rest}"
    return "" if default == "" else f"; default {default}"


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one option per TrainConfig field, its help from the field's comment."""
    p = argparse.ArgumentParser(
        prog="python -m minunet.train",
        description="Train the U-Net of Ronneberger et al. (2015) with hand-written backprop. "
                    "Options not given come from the preset, then from the defaults.")
    helps = field_help(TrainConfig)
    types = {"int": int, "float": float, "str": str}
    presets = "; ".join(f"{name}: " + ", ".join(f"{_flag(k)[2:]} {v}" for k, v in values.items())
                        for name, values in PRESETS.items())
    for f in fields(TrainConfig):
        if f.type == "bool":  # a switch that turns the default around
            flag = _flag(f"no_{f.name}" if f.default else f.name)
            text = ("turn off: " if f.default else "") + helps[f.name]
            p.add_argument(flag, dest=f.name, default=None, help=text.replace("%", "%%"),
                           action="store_false" if f.default else "store_true")
            continue
        text = helps[f.name] + (f"; {presets}" if f.name == "preset" else _defaults(f.name))
        p.add_argument(_flag(f.name), type=types[f.type], help=text.replace("%", "%%"),
                       choices=[c for c in CHOICES.get(f.name, ()) if c] or None)
    p.add_argument("--resume", metavar="CKPT",
                   help="continue a run exactly from its checkpoint (RUN/last.npz), in its run "
                        "folder: the saved settings apply; --device and --prefetch may change, "
                        "--iters, --val-every, --lr and --keep-checkpoints apply from the "
                        "checkpoint on (said so); other options that differ are refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out: its files (checkpoints included) are "
                        "removed once the new run has loaded its data; without it an existing "
                        "run folder is refused")
    p.add_argument("--describe", action="store_true",
                   help="print the per-layer table (shapes, parameters, GFLOP, memory) and exit")
    return p


def resolve_config(given: dict) -> TrainConfig:
    """Defaults < preset (by device unless named) < options given. ValueError if invalid."""
    try:
        device = backend.resolve_device(given.get("device", "auto"))
    except RuntimeError as e:  # --device cuda without a usable GPU
        raise ValueError(str(e)) from e
    if given.get("time") and "iters" in given:
        raise ValueError("--time and --iters both set the length of the run: give one (--time "
                         "measures the step and chooses the iterations; --iters N repeats them)")
    preset = given.get("preset") or ("paper" if device == "cuda" else "cpu")
    timed = {"schedule": "poly"} if given.get("time") else {}  # the rate ends with the budget
    return TrainConfig(**{**PRESETS[preset], **timed, **given, "preset": preset,
                          "device": device})


def model_config(cfg: TrainConfig, n_classes: int, in_channels: int = 1) -> UNetConfig:
    return UNetConfig(in_channels=in_channels, n_classes=n_classes, depth=cfg.depth,
                      base=cfg.base, dropout=cfg.dropout, upconv_relu=cfg.upconv_relu,
                      dtype=cfg.dtype, ops=cfg.ops)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = {f.name for f in fields(TrainConfig)}
    try:  # every check before anything is created: bad input leaves no run folder
        given = {k: v for k, v in vars(args).items() if k in names and v is not None}
        cfg = resolve_config(given)
        if args.describe:
            print(describe(model_config(cfg, 2), cfg.tile, cfg.batch))
            return 0
        if args.overwrite and args.resume:
            raise ValueError("--overwrite replaces a run and --resume continues one: give one")
        trainer = Trainer(cfg, resume=args.resume, given=set(given), overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:  # bad option, data or checkpoint: say so
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written, named
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    try:
        return trainer.run()
    except OSError as e:  # e.g. the disk filled up: the checkpoints written so far stay
        print(f"error: {e.filename or ''}: {e.strerror or e}; the run folder {trainer.out} "
              "keeps its last checkpoint (continue with --resume)", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- the loop


def score_of(row: dict) -> float:
    """The score best.npz minimises, of a metrics row (numbers, or metrics.csv's strings):
    the validation pixel error for two classes (ISBI, at its best threshold: it follows the
    segmentation, and it is steady where the Rand scores of a few images swing from one
    validation to the next), else the validation loss, else (nothing validated) the
    training loss."""
    for key in ("pixel_error", "val_xent", "train_loss_weighted"):
        if row.get(key, "") != "":
            return float(row[key])
    return math.inf


def _best_of(rng: dict) -> float:
    """The best score so far that a checkpoint recorded (None: none yet)."""
    best = rng.get("best_score")
    return math.inf if best is None else float(best)


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
        self.out_size = output_size(cfg.tile, cfg.depth)
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

    # -- the time budget ----------------------------------------------------------------

    # steps run and then undone to measure the step time: WARM_STEPS untimed, then up to
    # TIMED_STEPS timed, fewer (but at least 3) once they take MEASURE_SHARE of the budget
    WARM_STEPS, TIMED_STEPS, MEASURE_SHARE = 3, 20, 0.02

    def fit_budget(self, seconds: float) -> None:
        """Set cfg.iters (and the schedule's end) so that the run ends within `seconds` of
        this Trainer's start: time a few steps after a warm-up and one validation with its
        checkpoint and plots (after one more to warm up), undo them (the run then starts from
        iteration 0 exactly as `--iters N` would), and take the largest N with
            N * step + ceil(N / val_every) * validation <= seconds left - reserve
        (docs/DESIGN.md, "Time budget").
        """
        cfg = self.cfg
        params = {k: p.copy() for k, p in self.model.state_dict().items()}
        velocity = {k: v.copy() for k, v in self.opt.state_dict().items()}
        times = []
        while len(times) < self.WARM_STEPS + self.TIMED_STEPS:
            t = time.perf_counter()
            with np.errstate(all="ignore"):
                float(self.step()[0])  # float() waits for the device
            times.append(time.perf_counter() - t)
            timed = times[self.WARM_STEPS:]
            if len(timed) >= 3 and sum(timed) > self.MEASURE_SHARE * seconds:
                break
        self.model.load_state_dict(params)
        self.opt.load_state_dict(velocity)
        self.model.release_caches()
        self.sampler.close()
        self.sampler = self._sampler(0)
        step = float(np.median(times[self.WARM_STEPS:]))  # a slow outlier says little
        run_folder = self.folder
        with tempfile.TemporaryDirectory() as tmp:  # nothing in the run folder before it fits
            self.folder = RunFolder(tmp)
            self.validate_and_save(quiet=True)  # the first one also imports and compiles
            t = time.perf_counter()
            self.validate_and_save(quiet=True)
            validation = time.perf_counter() - t
        self.folder, self.val_preds, self.best = run_folder, [], math.inf
        left = seconds - (time.monotonic() - self.started)
        reserve = 0.03 * seconds + 0.5  # the step time drifts; closing the run takes a moment
        n = int(max(0.0, left - reserve) / (step + validation / cfg.val_every))
        while n > 0 and n * step + math.ceil(n / cfg.val_every) * validation > left - reserve:
            n -= 1
        if n < 1:
            raise ValueError(f"--time {cfg.time} is too short: setting up took "
                             f"{seconds - left:.1f} s, a step takes {step:.2f} s and a "
                             f"validation {validation:.1f} s; give more time or use --iters")
        cfg.iters = self.opt.config.max_iter = n
        self.budget = {"time": cfg.time, "seconds": seconds, "step_s": round(step, 4),
                       "validation_s": round(validation, 3), "setup_s": round(seconds - left, 2),
                       "iters": n}
        self._say(f"--time {cfg.time}: a step takes {step:.3f} s, a validation with its "
                  f"checkpoint {validation:.1f} s, setting up took {seconds - left:.1f} s: "
                  f"training {n} iterations (repeat with --iters {n}; config.json)")

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
        saved = {"normalize": "max", **saved}  # what runs did before --normalize existed
        if "holdout" not in saved:  # before --holdout: nothing held out, ISBI validated 25-29
            isbi_val = saved.get("data", "").startswith("isbi2012") and not saved.get("val")
            saved = {**saved, "holdout": "none", **({"val": str(1 / 6)} if isbi_val else {})}
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

    def behind_budget(self) -> bool:
        """Would a timed run, at the pace of its steps so far, end after its budget if it
        validated now? Then it skips this validation (never the last): the steps, and so the
        model, stay those of `--iters N`; only the metrics row and best.npz wait."""
        if not self.budget or self.resumed_from:  # a resumed run keeps every validation
            return False
        pace = (time.monotonic() - self.loop_started - self.validating) / max(self.it, 1)
        validations = 1 + math.ceil((self.cfg.iters - self.it) / self.cfg.val_every)
        projected = (self.elapsed() + (self.cfg.iters - self.it) * pace
                     + validations * self.budget["validation_s"])
        return projected > self.budget["seconds"]

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
        """Whole validation images by overlap-tile inference, dropout off: val_xent (the
        unweighted cross-entropy, see minunet/training/runfolder.py), pixel accuracy, and for two
        classes the four ISBI 2012 scores of the validation images pooled, exactly as predict
        (8-bit probabilities) and evaluate compute them."""
        from minunet.evaluation import metrics
        from minunet.inference.outputs import to_uint8
        from minunet.inference.tiles import predict

        if not self.data.val:
            return {}
        self.model.release_caches()  # the last step's activations are not needed again
        self.model.eval()
        losses, correct, total, counts, self.val_preds = [], 0, 0, [], []
        try:
            for s in self.data.val:
                with np.errstate(all="ignore"):  # overflow shows as non-finite output:
                    probs = backend.to_host(predict(self.model, s.image))  # (K, H, W)
                if not np.isfinite(probs).all():
                    self.diverged(self.it, f"the prediction of validation image {s.name} is "
                                  "not finite (the weights grew too large)")
                p_true = np.take_along_axis(probs, s.label[None], axis=0)[0]  # (H, W)
                losses.append(float(-np.log(np.maximum(p_true, 1e-12)).mean()))
                pred = probs.argmax(0)
                correct += int((pred == s.label).sum())
                total += s.label.size
                if self.data.n_classes == 2:
                    counts.append(metrics.slice_counts(to_uint8(probs[1]) / 255.0,
                                                       s.label == 1))
                self.val_preds.append((s.image, s.label, probs))
        finally:
            self.model.train()
        res = {"val_xent": float(np.mean(losses)), "pixel_accuracy": correct / total}
        if counts:
            res.update(metrics.scores_of(counts).as_dict())
        return res

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
                "optimizer": self.opt.config_dict(), **budget}

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


if __name__ == "__main__":
    sys.exit(main())
