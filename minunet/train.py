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

The command is argument parsing plus calls: the options are TrainConfig's fields
(minunet/training/config.py: each field's comment is its --help), the step and the loop
are the Trainer's (minunet/training/trainer.py). --arch NAME trains another network of the
models/ registry, --model 'name=value,...' sets its other options.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from minunet.models import registry
from minunet.training.config import (
    CHOICES,
    PRESETS,
    TrainConfig,
    _flag,
    field_help,
    model_config,
    parse_duration,
    resolve_config,
)
from minunet.training.trainer import Stop, Trainer, step_key, train_step

__all__ = ["PRESETS", "Stop", "TrainConfig", "Trainer", "build_parser", "main", "model_config",
           "parse_duration", "resolve_config", "step_key", "train_step"]


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = {f.name for f in fields(TrainConfig)}
    try:  # every check before anything is created: bad input leaves no run folder
        given = {k: v for k, v in vars(args).items() if k in names and v is not None}
        cfg = resolve_config(given)
        if args.describe:
            print(registry.describe(model_config(cfg, 2), cfg.tile, cfg.batch))
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


if __name__ == "__main__":
    sys.exit(main())
