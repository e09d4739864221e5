"""The family comparison's runs (`python -m minunet.compare`, issue 27): every entry (a network,
its options and its loss) trained for the same budget and scored on held-out data, one seed at a
time, each step a subprocess of the commands a user would type, so that a crash of one run does
not end the comparison. The data kind chooses the task (`Settings.task`):

- isbi2012:PATH, the ISBI 2012 protocol (docs/DESIGN.md, "ISBI 2012 protocol", "Time budget"):
  the slices the run holds out, scored pixel-wise (V_rand, V_info, pixel and Rand error), and
  every kept checkpoint scored with `curve`;
- cells[:n=16,size=384], the README's cells walk-through ("Cells: instances, object scores"):
  trained on `touching_cells` (instance labels), scored as objects (F1, SEG, AP) on its three
  held-out images touching_cells(size, seed=(99, i)), i = 0..2, never trained on, written once
  for the whole comparison into OUT/heldout/images/{i}.png and labels/{i}.tif (16-bit ids).

Per entry and seed, in OUT/<entry>/seed<K>/:

    run/                  python -m minunet.train --data DATA --time T --seed K --arch ...
                          [--keep-checkpoints: ISBI only] --out .../run   (train.log)
    train.json            the training's command, exit status, wall-clock seconds and peak
                          resident memory (VmHWM of the training process, read from
                          /proc/PID/status every POLL_S seconds while it runs: a high-water
                          mark, so only a peak in its last POLL_S seconds can be missed)
    heldout/images, heldout/truth
                          ISBI: the slices run/config.json holds out (default 25-29 of 30)
    pred/, pred_tta8/     python -m minunet.predict --checkpoint run/best.npz [--tta 8]
                          (cells: OUT/heldout/images --instances)
    eval.csv, eval_tta8.csv
                          python -m minunet.evaluate pred/prob heldout/truth --csv ...
                          (cells: pred/instances OUT/heldout/labels --instances --csv ...)
    run/curve.csv         ISBI: python -m minunet.curve run: every kept checkpoint's scores
    result.json           every number above and the file it came from (paths relative to OUT)

With a time budget every training runs the steps OUT/calibration.json gives its entry (the
budget over its step time measured side by side with the others', minunet/training/
calibration.py): --iters, --val-every and the poly schedule a --time run would take.

Resumable: an entry+seed whose result.json exists is skipped; a half-done one is redone from
its first missing step. A finished training (train.json with exit status 0 and run/last.npz at
the run's last iteration) is not trained again; an interrupted one is started again from
iteration 0 with --overwrite (one path for every length: its train.json's wall-clock and peak
memory are then those of one process, and a plain --time budget, which counts wall-clock from
the start of its process, could not be resumed fairly at all). Training again removes
the scores of the earlier training (pred*, eval*.csv; --overwrite removes run/curve.csv).
The training, its resumption and its memory are one code path for both tasks (`train_step`),
and so are prediction and scoring (`score_heldout`); only the held-out set and the columns read
from evaluate's CSV differ.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet.files import atomic_write_text

POLL_S = 0.2  # seconds between two readings of the training process's VmHWM
SCORES = ("pixel_error", "rand_error", "v_rand", "v_info")  # the ISBI 2012 scores
# evaluate --instances' scores (minunet/evaluation/objects.py), and its object counts
CELL_SCORES = ("f1", "seg", "ap", "precision", "recall", "mean_matched_iou", "ap_50", "ap_75")
CELL_COUNTS = ("n_true", "n_pred", "tp", "fp", "fn")
CELLS = {"n": 16, "size": 384, "seed": 0}  # README, "Cells: ...": cells:n=16,size=384
HELDOUT_SEED = 99  # the walk-through's held-out images: touching_cells(size, seed=(99, i))
HELDOUT_IMAGES = 3
PREDICTIONS = {"plain": ("pred", "eval.csv", []), "tta8": ("pred_tta8", "eval_tta8.csv",
                                                           ["--tta", "8"])}
XENT = "softmax_cross_entropy"  # the U-Net's weighted cross-entropy


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: a network (`arch`), its train options (TrainConfig fields:
    base, model, ...) and a word on what it is."""

    name: str
    arch: str
    options: dict = field(default_factory=dict)
    note: str = ""

    @property
    def loss(self) -> str:
        """The training loss: --model loss=... where given, else the network's own default."""
        for item in self.options.get("model", "").split(","):
            key, _, value = item.partition("=")
            if key.strip() == "loss":
                return value.strip()
        from minunet.models import registry

        return registry.get(self.arch).config_class().loss


# The default entries: the U-Net at the CPU preset, and every family network at its CPU width
# (README, "The U-Net family": about the CPU preset's cost) with its own loss; UNet++ and UNet
# 3+, whose losses are not the U-Net's, once more with the U-Net's weighted cross-entropy, so
# the table tells what the architecture buys from what the loss buys.
ENTRIES = {e.name: e for e in (
    Entry("unet", "unet", {}, "the 2015 U-Net, the CPU preset (base 8)"),
    Entry("unet-bn", "unet-bn", {"base": 8}, "padded, BatchNorm"),
    Entry("resunet", "resunet", {"base": 8}, "residual units"),
    Entry("unetpp", "unetpp", {"base": 4}, "nested skips, its own loss"),
    Entry("unetpp-xent", "unetpp", {"base": 4, "model": f"loss={XENT}"},
          "nested skips, the U-Net's loss"),
    Entry("unet3p", "unet3p", {"base": 4}, "full-scale skips, its own loss"),
    Entry("unet3p-xent", "unet3p", {"base": 4, "model": f"loss={XENT}"},
          "full-scale skips, the U-Net's loss"),
    Entry("mobile-unet", "mobile-unet", {"model": "width=0.5,decoder_base=4"},
          "MobileNetV2 encoder"),
    Entry("eff-unet", "eff-unet", {"model": "width=0.5,decoder_base=4"},
          "EfficientNet-B0 encoder"),
)}


def select_entries(text: str) -> list[Entry]:
    """'unet,unetpp-xent' -> those entries, in the order given; '' -> all. ValueError naming
    the known entries for an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()] if text else list(ENTRIES)
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        raise ValueError(f"--nets: unknown entry {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(ENTRIES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"--nets {text!r} names an entry twice; give each once")
    return [ENTRIES[n] for n in names]


def cells_options(spec: str) -> dict:
    """'cells' or 'cells:n=..,size=..,seed=..' -> {'n', 'size', 'seed'}, the walk-through's
    n=16, size=384 where not given. ValueError naming the fix for an unknown option, n < 2, a
    size under 64 (two cells or fewer), or seed 99 (the held-out images' seed)."""
    kind, _, rest = spec.partition(":")
    opts = dict(CELLS)
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = (t.strip() for t in part.partition("="))
        if kind != "cells" or not sep or key not in CELLS or not value.isdigit():
            raise ValueError(f"--data {spec}: {part!r} not understood; give cells:n=16,"
                             "size=384 (integers n, size and optionally seed)")
        opts[key] = int(value)
    if opts["n"] < 2:
        raise ValueError(f"--data {spec}: need n >= 2 (one to train, one to validate)")
    if opts["size"] < 64:
        raise ValueError(f"--data {spec}: size {opts['size']} holds hardly a cell; give "
                         "size >= 64 (the walk-through's is 384)")
    if opts["seed"] == HELDOUT_SEED:
        raise ValueError(f"--data {spec}: seed {HELDOUT_SEED} would train on the held-out "
                         f"images touching_cells(size, seed=({HELDOUT_SEED}, i)); give "
                         "another seed")
    return opts


def cells_data(opts: dict) -> str:
    """{'n': 16, 'size': 384, 'seed': 0} -> 'cells:n=16,size=384' (',seed=K' when K != 0):
    one spelling per data set, as train gets it and compare.json records it."""
    return f"cells:n={opts['n']},size={opts['size']}" + \
        (f",seed={opts['seed']}" if opts["seed"] else "")


@dataclass
class Settings:
    """What every training of one comparison shares (OUT/compare.json records it)."""

    data: str  # isbi2012:PATH (PATH absolute) or cells:n=N,size=S[,seed=K] (`cells_data`)
    time: str = "10m"  # the budget of every training ('' when iters is set)
    iters: int | None = None  # a fixed number of steps instead (tests, quick looks)
    preset: str = "cpu"
    train_options: dict = field(default_factory=dict)  # val, holdout, tile, val_every,
    # validations, device
    # with a time budget: {entry: OUT/calibration.json's entry ('iters', 'val_every',
    # 'step_s')}, the steps the budget buys each network (minunet/training/calibration.py)
    steps: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        """'isbi2012' or 'cells': the data kind, which chooses the held-out set and scores."""
        return self.data.partition(":")[0]

    def given(self, entry: Entry, seed: int, run: Path) -> dict:
        """The TrainConfig options of one training (as `python -m minunet.train` gets them);
        checkpoints are kept for `curve` (ISBI only). With a time budget and the entry's
        calibrated steps: --iters and --val-every from them and the schedule --time would
        take (poly: the rate ends at the last step); without them, --time (only to resolve
        the entry's options: the comparison trains nothing before it is calibrated)."""
        options = dict(self.train_options)
        if self.iters:
            length = {"iters": self.iters}
        elif entry.name in self.steps:
            options.pop("validations", None)  # spread over the steps already (val_every)
            calibrated = self.steps[entry.name]
            length = {"iters": calibrated["iters"], "val_every": calibrated["val_every"],
                      "schedule": "poly"}
        else:
            length = {"time": self.time}
        return {"data": self.data, **length, "preset": self.preset, **options,
                "seed": seed, "arch": entry.arch, **entry.options,
                "keep_checkpoints": self.task == "isbi2012", "out": str(run)}

    def record(self) -> dict:
        """compare.json's settings; a time budget is spent as calibrated steps."""
        return {"data": self.data, "time": self.time, "iters": self.iters,
                "preset": self.preset, **self.train_options,
                **({"steps": "calibration.json"} if self.time else {})}


def train_command(given: dict, overwrite: bool = False) -> list[str]:
    """python -m minunet.train with the options `given` (TrainConfig fields)."""
    cmd = [sys.executable, "-m", "minunet.train"]
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value not in (None, False, ""):
            cmd += [flag, str(value)]
    return cmd + (["--overwrite"] if overwrite else [])


def check_entry(entry: Entry, settings: Settings) -> None:
    """ValueError naming the entry when its options would be refused by train (an invalid
    tile for its network, an unknown --model option, ...): said before anything runs."""
    from minunet.training.config import resolve_config

    given = settings.given(entry, 0, Path("unused"))
    given.pop("out")
    try:
        resolve_config({**given, "device": given.get("device", "cpu")})
    except (ValueError, TypeError) as e:
        raise ValueError(f"entry {entry.name}: {e}") from None


def network_cost(arch: str, model: dict) -> dict:
    """Parameters and forward GFLOP (2 per multiply-add) of the network a run's config.json
    "model" describes, summed over its own layer table (`layer_table(config, size)`) at 512 x
    512; the valid U-Net, which takes no 512 x 512 tile, at its paper tile 572 x 572 (output
    388 x 388): `size` says which."""
    from minunet.models import registry

    cls = registry.get(arch)
    config = registry.config_for(arch, {k: v for k, v in model.items() if k != "arch"})
    geometry = cls.geometry_of(config)
    size = 512
    if not geometry.is_valid(size):
        size = 572 if geometry.is_valid(572) else geometry.nearest_valid_sizes(size)[1]
    rows = cls.layer_table(config, size)
    return {"params": int(sum(r["params"] for r in rows)),
            "gflop": round(sum(r["gflop"] for r in rows), 4), "size": size}


def entry_cost(entry: Entry, settings: Settings) -> dict:
    """network_cost of an entry from its options (for an entry that has no finished run)."""
    from dataclasses import asdict

    from minunet.training.config import model_config, resolve_config

    given = settings.given(entry, 0, Path("unused"))
    given.pop("out")
    cfg = resolve_config({**given, "device": "cpu"})
    return network_cost(entry.arch, asdict(model_config(cfg, 2)))


# ----------------------------------------------------------------------------- subprocesses


@dataclass
class Finished:
    returncode: int
    wall_s: float
    peak_rss_mb: float | None


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of process `pid` in MiB, None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_logged(cmd: list[str], log: Path, watch_memory: bool = False) -> Finished:
    """Run `cmd` with its output in `log`; with watch_memory, its peak resident memory.
    Ctrl-C reaches the child too (same process group): wait for it to save, then re-raise."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = None
    start = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=POLL_S if watch_memory else None)
                    break
                except subprocess.TimeoutExpired:
                    now = vm_hwm_mb(proc.pid)
                    if now is not None:
                        peak = max(peak or 0.0, now)
        except KeyboardInterrupt:
            proc.wait()  # the trainer saves last.npz and exits 130
            raise
    return Finished(rc, round(time.monotonic() - start, 2),
                    None if peak is None else round(peak, 1))


def tail(log: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


# ----------------------------------------------------------------------------- the steps


class Interrupted(Exception):
    """A training was interrupted (exit status 130): the comparison stops there."""


def held_out(run: Path, dest: Path) -> list[str]:
    """Copy the slices RUN/config.json holds out to dest/images and dest/truth (from the ISBI
    folder's images/ and labels/, byte for byte; pages of the TIFF stacks as single TIFFs);
    their names."""
    from minunet.data.loaders import (
        DataError,
        as_holdout,
        as_index_list,
        files_by_stem,
        load_dataset,
    )

    train = json.loads((run / "config.json").read_text())["train"]
    data = load_dataset(train["data"], as_index_list(train.get("val", "")), "binary",
                        train.get("normalize", "auto"), as_holdout(train.get("holdout", "")))
    if not data.holdout:
        raise DataError(f"{run} held no slices out; give --holdout")
    root = Path(train["data"].split(":", 1)[1])
    root = root.parent if root.is_file() else root
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "images").mkdir(parents=True)
    (dest / "truth").mkdir(parents=True)
    names = [s.name for s in data.holdout]
    if (root / "images").is_dir():
        images, labels = files_by_stem(root / "images"), files_by_stem(root / "labels", "labels")
        for name in names:
            shutil.copyfile(images[name], dest / "images" / images[name].name)
            shutil.copyfile(labels[name], dest / "truth" / labels[name].name)
        return names
    import tifffile

    from minunet.data.loaders import read_array

    stacks = {"images": read_array(root / "train-volume.tif"),
              "truth": read_array(root / "train-labels.tif", mask=True)}
    for name in names:  # "slice 25"
        i = int(name.split()[-1])
        for sub, stack in stacks.items():
            tifffile.imwrite(dest / sub / f"{i:02d}.tif", stack[i] if stack.ndim == 3 else stack)
    return names


def cells_heldout(out: Path, size: int) -> list[str]:
    """The walk-through's held-out images, written once for a whole comparison:
    OUT/heldout/images/{i}.png (uint8) and OUT/heldout/labels/{i}.tif (uint16 instance ids) of
    touching_cells(size, seed=(99, i)), i = 0..2; their names. Written into a temporary folder
    renamed when complete (never a half set); where OUT/heldout exists, its files are read back
    and must equal the generator's, else ValueError naming the fix."""
    import tifffile
    from PIL import Image

    from minunet.data.synthetic import touching_cells

    names = [str(i) for i in range(HELDOUT_IMAGES)]
    cells = [touching_cells(size, seed=(HELDOUT_SEED, i)) for i in range(HELDOUT_IMAGES)]
    dest = out / "heldout"
    if dest.exists():
        files = {f"{sub}/{p.name}" for sub in ("images", "labels") if (dest / sub).is_dir()
                 for p in (dest / sub).iterdir()}
        want = [f"{sub}/{n}.{ext}" for sub, ext in (("images", "png"), ("labels", "tif"))
                for n in names]
        same = files == set(want) and all(
            np.array_equal(np.asarray(Image.open(dest / "images" / f"{n}.png")), c.image) and
            np.array_equal(tifffile.imread(dest / "labels" / f"{n}.tif"), c.instances)
            for n, c in zip(names, cells, strict=True))
        if not same:
            raise ValueError(f"{dest} is not the held-out set of touching_cells({size}, "
                             f"seed=({HELDOUT_SEED}, i)), i = 0..{HELDOUT_IMAGES - 1}; remove "
                             "it (it is written again), or name another --out")
        return names
    tmp = Path(tempfile.mkdtemp(prefix=".heldout-", dir=out))
    try:
        for sub in ("images", "labels"):
            (tmp / sub).mkdir()
        for n, c in zip(names, cells, strict=True):
            Image.fromarray(c.image).save(tmp / "images" / f"{n}.png")
            tifffile.imwrite(tmp / "labels" / f"{n}.tif", c.instances.astype(np.uint16))
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names


def read_all_row(path: Path, scores=SCORES, counts=()) -> dict:
    """The 'all' row of an evaluate CSV: `scores` as floats (default the four ISBI scores),
    `counts` as integers."""
    with open(path, newline="") as f:
        row = [r for r in csv.DictReader(f) if r["slice"] == "all"][-1]
    return {**{k: float(row[k]) for k in scores}, **{k: int(row[k]) for k in counts}}


def read_curve(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{"iteration": int(r["iteration"]),
                 "elapsed_s": float(r["elapsed_s"]) if r["elapsed_s"] else None,
                 **{k: float(r[k]) for k in SCORES}} for r in csv.DictReader(f)]


def training_done(pair: Path) -> dict | None:
    """train.json of a finished training of this entry+seed (exit status 0, last.npz at the
    run's last iteration), else None."""
    from minunet.training.checkpoint import load_checkpoint

    marker, run = pair / "train.json", pair / "run"
    if not (marker.is_file() and (run / "last.npz").is_file() and (run / "best.npz").is_file()):
        return None
    done = json.loads(marker.read_text())
    iters = json.loads((run / "config.json").read_text())["train"]["iters"]
    if done.get("returncode") != 0 or load_checkpoint(run / "last.npz").iteration != iters:
        return None
    return done


class StepFailed(Exception):
    """A step's command exited with a status other than 0: the entry+seed failed there."""

    def __init__(self, step: str, log: Path, returncode: int):
        super().__init__(f"{step} failed (exit status {returncode}; {log})")
        self.step, self.log, self.returncode = step, log, returncode


def run_step(cmd: list[str], log: Path, step: str) -> Finished:
    """run_logged, StepFailed where the command fails."""
    done = run_logged(cmd, log)
    if done.returncode != 0:
        raise StepFailed(step, log, done.returncode)
    return done


def train_step(entry: Entry, seed: int, settings: Settings, pair: Path, rel, say) -> dict:
    """The training of one entry+seed in PAIR/run, unless `training_done` (then its
    train.json); an unfinished one again from iteration 0 (--overwrite), the earlier scores
    removed. train.json: command, exit status, wall-clock seconds, peak memory (returned).
    Interrupted on exit status 130, StepFailed on another failure."""
    run, log = pair / "run", pair / "train.log"
    trained = training_done(pair)
    if trained is not None:
        return trained
    overwrite = run.exists()
    for stale in ("train.json", *(v[1] for v in PREDICTIONS.values())):
        (pair / stale).unlink(missing_ok=True)
    for stale in ("heldout", *(v[0] for v in PREDICTIONS.values())):
        shutil.rmtree(pair / stale, ignore_errors=True)
    cmd = train_command(settings.given(entry, seed, run), overwrite)
    say(f"{entry.name} seed {seed}: training"
        + (" again from the start (--overwrite: a budget cannot be resumed fairly)"
           if overwrite else "") + f" (log {log})")
    done = run_logged(cmd, log, watch_memory=True)
    if done.returncode == 130:
        raise Interrupted(f"{entry.name} seed {seed}: training interrupted ({log})")
    if done.returncode != 0:
        raise StepFailed("train", log, done.returncode)
    trained = {"command": cmd, "returncode": 0, "wall_s": done.wall_s,
               "peak_rss_mb": done.peak_rss_mb, "log": rel(log)}
    atomic_write_text(pair / "train.json", json.dumps(trained, indent=1))
    return trained


def training_record(entry: Entry, trained: dict, pair: Path, rel,
                    calibrated: dict | None = None) -> dict:
    """result.json's 'train' (steps, iterations of best.npz and last.npz, budget or
    calibration, the machine, wall_s, peak memory) and 'network' (parameters, GFLOP) of a
    finished training, with their files. calibrated: the entry's calibration.json entry."""
    from minunet.training.checkpoint import load_checkpoint

    run = pair / "run"
    config = json.loads((run / "config.json").read_text())
    best, last = load_checkpoint(run / "best.npz"), load_checkpoint(run / "last.npz")
    return {"train": {**trained, "config": rel(run / "config.json"),
                      "steps": config["train"]["iters"], "last_iteration": last.iteration,
                      "best_iteration": best.iteration, "budget": config.get("budget"),
                      "calibration": None if calibrated is None else {
                          "step_s": calibrated["step_s"], "iters": calibrated["iters"],
                          "from": rel(pair.parent.parent / "calibration.json")},
                      "machine": config.get("machine"),
                      "from": f"{rel(run / 'config.json')} (train.iters, budget, machine), "
                              f"{rel(pair / 'train.json')} (wall_s, peak_rss_mb: VmHWM)"},
            "network": {**network_cost(entry.arch, config["model"]),
                        "from": f"layer table of {rel(run / 'config.json')} 'model'"}}


def score_heldout(pair: Path, inputs, truth: Path, task: str, device: str, rel, say,
                  label: str) -> dict:
    """Predict the held-out images from PAIR/run/best.npz without and with --tta 8 and score
    both with `evaluate`, each where its CSV is missing; {'plain'|'tta8': the 'all' row's
    scores, their CSV, predictions, checkpoint, tta}. inputs(): the images to predict (called
    only when something is predicted). task 'cells': --instances for both commands. label:
    'ENTRY seed K', for what it says."""
    cells = task == "cells"
    what, scored = ("images", "instances") if cells else ("slices", "prob")
    flag = ["--instances"] if cells else []
    best = pair / "run" / "best.npz"
    scores = {}
    for kind, (pred, csv_name, extra) in PREDICTIONS.items():
        if not (pair / csv_name).is_file():
            images = inputs()
            shutil.rmtree(pair / pred, ignore_errors=True)
            say(f"{label}: predicting the held-out {what}"
                + (" with --tta 8" if extra else ""))
            run_step([sys.executable, "-m", "minunet.predict", "--checkpoint", str(best),
                      *map(str, images), "--out", str(pair / pred), *flag, *extra,
                      *(["--device", device] if device else [])],
                     pair / f"{pred}.log", f"predict ({kind})")
            run_step([sys.executable, "-m", "minunet.evaluate", str(pair / pred / scored),
                      str(truth), *flag, "--csv", str(pair / csv_name)],
                     pair / f"{csv_name[:-4]}.log", f"evaluate ({kind})")
        read = read_all_row(pair / csv_name, CELL_SCORES, CELL_COUNTS) if cells else \
            read_all_row(pair / csv_name)
        scores[kind] = {**read, "csv": rel(pair / csv_name),
                        "predictions": rel(pair / pred / scored), "checkpoint": rel(best),
                        "tta": 8 if extra else 1}
    return scores


def run_pair(entry: Entry, seed: int, settings: Settings, out: Path, device: str = "",
             say=print) -> dict:
    """Train, predict, evaluate and score one entry+seed in OUT/<entry>/seed<K>, each step
    skipped where its output exists; result.json (also returned). A step that fails gives a
    result with status 'failed', the step and its log. Interrupted: a training interrupted.
    ISBI: the run's held-out slices, then `curve`; cells: OUT/heldout (`cells_heldout`)."""
    pair = out / entry.name / f"seed{seed}"
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731  paths in result.json: from OUT
    run = pair / "run"
    result = {"entry": entry.name, "arch": entry.arch, "options": entry.options,
              "loss": entry.loss, "seed": seed, "settings": settings.record(),
              "folder": rel(pair), "run": rel(run)}
    try:
        result |= training_record(entry, train_step(entry, seed, settings, pair, rel, say),
                                  pair, rel, settings.steps.get(entry.name))
        if settings.task == "cells":
            size = cells_options(settings.data)["size"]
            names = cells_heldout(out, size)  # written once, else checked (0.2 s each)
            result["scores"] = score_heldout(pair, lambda: [out / "heldout" / "images"],
                                             out / "heldout" / "labels", "cells", device,
                                             rel, say, f"{entry.name} seed {seed}")
            result["heldout"] = names
            result["heldout_from"] = (f"{rel(out / 'heldout')}: touching_cells({size}, seed="
                                      f"({HELDOUT_SEED}, i)), i = 0..{HELDOUT_IMAGES - 1}")
        else:
            truth = pair / "heldout"

            def slices() -> list[Path]:
                if not (truth / "truth").is_dir():
                    held_out(run, truth)
                return sorted((truth / "images").iterdir())

            result["scores"] = score_heldout(pair, slices, truth / "truth", "isbi2012",
                                             device, rel, say, f"{entry.name} seed {seed}")
            if (truth / "truth").is_dir():
                result["heldout"] = sorted(p.stem for p in (truth / "truth").iterdir())
            if not (run / "curve.csv").is_file():
                say(f"{entry.name} seed {seed}: scoring the kept checkpoints (curve)")
                run_step([sys.executable, "-m", "minunet.curve", str(run)],
                         pair / "curve.log", "curve")
            result["curve"] = {"csv": rel(run / "curve.csv"),
                               "rows": read_curve(run / "curve.csv")}
    except StepFailed as f:
        result.update(status="failed", step=f.step, returncode=f.returncode, log=rel(f.log))
        say(f"{entry.name} seed {seed}: {f.step} FAILED (exit status {f.returncode}; "
            f"{f.log}): {tail(f.log)}")
        atomic_write_text(pair / "result.json", json.dumps(result, indent=1))
        return result
    result["status"] = "done"
    atomic_write_text(pair / "result.json", json.dumps(result, indent=1))
    v = result["scores"]
    key, name = ("f1", "F1") if settings.task == "cells" else ("v_rand", "V_rand")
    say(f"{entry.name} seed {seed}: done; held-out {name} {v['plain'][key]:.4f}, with "
        f"--tta 8 {v['tta8'][key]:.4f} ({rel(pair / 'result.json')})")
    return result
