"""The training options: `TrainConfig` (each field's comment is its --help), the presets, the
rules every option must follow, and the model config a run's options make.

`python -m minunet.train` (minunet/train.py) builds its parser from these fields; the Trainer
(minunet/training/trainer.py) runs them; checkpoints record them as config["train"].

The network is chosen by `arch` (a name in the models/ registry, minunet/models/__init__.py);
the options that every architecture's config shares (base, depth, dropout, upconv_relu, dtype,
ops) are fields here, and any other option of an architecture's config comes in `model`
('name=value,name=value'), so that every architecture's options reach it from the command
line without a field here (`model_config`).
"""

from __future__ import annotations

import inspect
import io
import math
import re
import tokenize
from dataclasses import dataclass, fields

from minunet import backend
from minunet.models import registry
from minunet.nn.door import DEFAULT_OPS
from minunet.nn.model import LOSS_MIN_OUTPUT

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
    validations: int = 0  # with --time: validate this many times, evenly over the budget
    # (--val-every becomes the iterations it chooses divided by this, rounded up; written to
    # config.json); 0: every --val-every iterations, however many that makes
    keep_checkpoints: bool = False  # also keep each validation's checkpoint as
    # RUN/checkpoints/ITERATION.npz (python -m minunet.curve scores them: the learning curve)
    out: str = ""  # run folder; unset (''): runs/<date-time>
    dtype: str = "float32"  # float32 trains; float64 for checks
    prefetch: int = 2  # tiles prepared by a background thread (0 on the CPU: it competes
    # for the cores)
    ops: str = DEFAULT_OPS  # fast: chunked, threaded, fused ops (minunet/fast); plain: the lesson's
    # whole-array ops (minunet/ops), slower
    arch: str = "unet"  # the network: a name in the models/ registry (minunet/models)
    model: str = ""  # the architecture's other options, 'name=value,name=value' (fields of
    # its config class that have no option here, e.g. a width or a block count)
    encoder_weights: str = ""  # a torchvision state dict (.pth) for the encoder of
    # mobile-unet (mobilenet_v2) or eff-unet (efficientnet_<variant>): transfer learning;
    # read once (with torch), then the run's checkpoints hold the weights

    def __post_init__(self):
        check_config(self)


RULES = {  # option: (is the value valid?, what it must be)
    **{k: (lambda v: v >= 1, "an integer >= 1")
       for k in ("base", "depth", "batch", "iters", "val_every")},
    **{k: (lambda v: v >= 0, "an integer >= 0")
       for k in ("warmup", "seed", "prefetch", "validations")},
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
    if cfg.encoder_weights and "encoder_weights" not in {
            f.name for f in fields(registry.get(cfg.arch).config_class)}:
        raise ValueError(f"--encoder-weights: {cfg.arch} has no pretrained encoder to load "
                         "(mobile-unet and eff-unet have); leave it out")
    mcfg = model_config(cfg, 2)  # an unknown --arch or --model: said
    geometry = registry.geometry(mcfg)
    if not geometry.is_valid(cfg.tile):
        raise ValueError(f"--tile: {geometry.invalid_size_message(cfg.tile)}")
    least = LOSS_MIN_OUTPUT.get(mcfg.loss, 1)
    if geometry.output_size(cfg.tile) < least:
        fits = next(s for s in range(cfg.tile, cfg.tile + 4096) if geometry.is_valid(s)
                    and geometry.output_size(s) >= least)
        raise ValueError(f"--tile {cfg.tile} gives outputs of {geometry.output_size(cfg.tile)} "
                         f"px; the loss {mcfg.loss!r} needs at least {least}: use --tile "
                         f"{fits}, or another loss (--model loss=bce_dice)")
    as_index_list(cfg.val)  # DataError (a ValueError) if --val cannot be read
    as_holdout(cfg.holdout)  # likewise --holdout
    if cfg.time:
        parse_duration(cfg.time)  # likewise --time
    elif cfg.validations:
        raise ValueError("--validations spreads validations over a --time budget: give --time, "
                         "or with --iters choose their interval with --val-every")
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
    chosen = {**PRESETS[preset], **timed, **given, "preset": preset, "device": device}
    if given.get("arch", "unet") != "unet":
        chosen |= own_defaults(given)
        if "tile" not in given:
            chosen["tile"] = preset_tile(chosen)
    return TrainConfig(**chosen)


MODEL_FIELDS = ("base", "depth")  # TrainConfig's options that size the network


def own_defaults(given: dict) -> dict:
    """A preset's base and depth are the U-Net's widths: another architecture takes its own
    (its reference configuration, e.g. UNet++'s base 32) for those its config has, unless
    given on the command line. The preset's training recipe (dropout included: none on the
    CPU preset's narrow networks) applies to every architecture."""
    try:
        cls = registry.get(given["arch"]).config_class
    except ValueError:
        return {}  # TrainConfig's check names the unknown architecture
    defaults = {f.name: f.default for f in fields(cls)}
    return {k: defaults[k] for k in MODEL_FIELDS if k in defaults and k not in given}


def preset_tile(chosen: dict) -> int:
    """The preset's tile for another architecture: its valid size nearest below the preset's
    (316 -> 288 for a padded network on a 32-px grid), so that a preset fits every --arch."""
    probe = TrainConfig.__new__(TrainConfig)  # unchecked: only the model's options are read
    for f in fields(TrainConfig):
        setattr(probe, f.name, chosen.get(f.name, f.default))
    try:
        geometry = registry.geometry(model_config(probe, 2))
    except (ValueError, TypeError):
        return chosen["tile"]  # the full check (TrainConfig) says what is wrong
    below, above = geometry.nearest_valid_sizes(chosen["tile"])
    return below if below is not None else above


def model_config(cfg: TrainConfig, n_classes: int, in_channels: int = 1):
    """The config of the architecture cfg.arch names: the options of TrainConfig that its
    config class has (base, depth, dropout, upconv_relu, dtype, ops: whichever it has), then
    those of --model. ValueError naming an option the architecture does not have."""
    cls = registry.get(cfg.arch).config_class
    known = {f.name for f in fields(cls)}
    shared = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)
              if f.name in known and f.name not in ("arch", "model")}
    return registry.config_for(cfg.arch, {**shared, **parse_model_options(cfg.model, cls),
                                          "in_channels": in_channels, "n_classes": n_classes})


def parse_model_options(text: str, cls) -> dict:
    """'width=8,residual=true' -> {'width': 8, 'residual': True}, typed by the fields of the
    config class `cls`; ValueError naming what cannot be read."""
    types = {f.name: f.type for f in fields(cls)}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types or name == "arch":
            raise ValueError(f"--model {item!r}: expected name=value with a name among "
                             f"{', '.join(sorted(set(types) - {'arch'}))}")
        kind = types[name] if isinstance(types[name], str) else types[name].__name__
        value = value.strip()
        try:
            if kind == "bool":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[name] = value.lower() in ("true", "1")
            else:
                out[name] = {"int": int, "float": float}.get(kind, str)(value)
        except ValueError:
            raise ValueError(f"--model {name}={value}: expected a {kind}") from None
    return out
