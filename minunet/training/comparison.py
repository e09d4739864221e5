"""The family comparison's runs (`python -m minunet.compare`, issue 27): every entry (a network,
its options and its loss) trained and scored by the ISBI 2012 protocol (docs/DESIGN.md, "ISBI
2012 protocol", "Time budget"), one seed at a time, each step a subprocess of the commands a user
would type, so that a crash of one run does not end the comparison.

Per entry and seed, in OUT/<entry>/seed<K>/:

    run/                  python -m minunet.train --data isbi2012:PATH --time T --seed K
                          --arch ... --keep-checkpoints --out .../run   (train.log)
    train.json            the training's command, exit status, wall-clock seconds and peak
                          resident memory (VmHWM of the training process, read from
                          /proc/PID/status every POLL_S seconds while it runs: a high-water
                          mark, so only a peak in its last POLL_S seconds can be missed)
    heldout/images, heldout/truth
                          the slices run/config.json holds out (ISBI default 25-29 of 30)
    pred/, pred_tta8/     python -m minunet.predict --checkpoint run/best.npz [--tta 8]
    eval.csv, eval_tta8.csv
                          python -m minunet.evaluate pred/prob heldout/truth --csv ...
    run/curve.csv         python -m minunet.curve run: every kept checkpoint's held-out scores
    result.json           every number above and the file it came from (paths relative to OUT)

Resumable: an entry+seed whose result.json exists is skipped; a half-done one is redone from
its first missing step. A finished training (train.json with exit status 0 and run/last.npz at
the run's last iteration) is not trained again; an interrupted one is started again from
iteration 0 with --overwrite, because a --time budget cannot be resumed fairly (the budget
measured its steps and counts wall-clock time from the start of its one process, so a run
continued later would have had more time, or less, than the others). Training again removes
the scores of the earlier training (pred*, eval*.csv; --overwrite removes run/curve.csv).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from minunet.files import atomic_write_text

POLL_S = 0.2  # seconds between two readings of the training process's VmHWM
SCORES = ("pixel_error", "rand_error", "v_rand", "v_info")  # the ISBI 2012 scores
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


@dataclass
class Settings:
    """What every training of one comparison shares (OUT/compare.json records it)."""

    data: str  # isbi2012:PATH, PATH absolute
    time: str = "10m"  # the budget of every training ('' when iters is set)
    iters: int | None = None  # a fixed number of steps instead (tests, quick looks)
    preset: str = "cpu"
    train_options: dict = field(default_factory=dict)  # val, holdout, tile, val_every, device

    def given(self, entry: Entry, seed: int, run: Path) -> dict:
        """The TrainConfig options of one training (as `python -m minunet.train` gets them)."""
        length = {"iters": self.iters} if self.iters else {"time": self.time}
        return {"data": self.data, **length, "preset": self.preset, **self.train_options,
                "seed": seed, "arch": entry.arch, **entry.options, "keep_checkpoints": True,
                "out": str(run)}

    def record(self) -> dict:
        return {"data": self.data, "time": self.time, "iters": self.iters,
                "preset": self.preset, **self.train_options}


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


def read_all_row(path: Path) -> dict:
    """The 'all' row of an evaluate CSV: the four ISBI scores as floats."""
    with open(path, newline="") as f:
        row = [r for r in csv.DictReader(f) if r["slice"] == "all"][-1]
    return {k: float(row[k]) for k in SCORES}


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


def run_pair(entry: Entry, seed: int, settings: Settings, out: Path, device: str = "",
             say=print) -> dict:
    """Train, predict, evaluate and score one entry+seed in OUT/<entry>/seed<K>, each step
    skipped where its output exists; result.json (also returned). A step that fails gives a
    result with status 'failed', the step and its log. Interrupted: a training interrupted."""
    pair = out / entry.name / f"seed{seed}"
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731  paths in result.json: from OUT
    run = pair / "run"
    result = {"entry": entry.name, "arch": entry.arch, "options": entry.options,
              "loss": entry.loss, "seed": seed, "settings": settings.record(),
              "folder": rel(pair), "run": rel(run)}

    def failed(step: str, log: Path, rc: int) -> dict:
        result.update(status="failed", step=step, returncode=rc, log=rel(log))
        say(f"{entry.name} seed {seed}: {step} FAILED (exit status {rc}; {log}): {tail(log)}")
        atomic_write_text(pair / "result.json", json.dumps(result, indent=1))
        return result

    trained = training_done(pair)
    log = pair / "train.log"
    if trained is None:
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
            return failed("train", log, done.returncode)
        trained = {"command": cmd, "returncode": 0, "wall_s": done.wall_s,
                   "peak_rss_mb": done.peak_rss_mb, "log": rel(log)}
        atomic_write_text(pair / "train.json", json.dumps(trained, indent=1))
    config = json.loads((run / "config.json").read_text())
    from minunet.training.checkpoint import load_checkpoint

    best, last = load_checkpoint(run / "best.npz"), load_checkpoint(run / "last.npz")
    result["train"] = {**trained, "config": rel(run / "config.json"),
                       "steps": config["train"]["iters"], "last_iteration": last.iteration,
                       "best_iteration": best.iteration, "budget": config.get("budget"),
                       "from": f"{rel(run / 'config.json')} (train.iters, budget), "
                               f"{rel(pair / 'train.json')} (wall_s, peak_rss_mb: VmHWM)"}
    result["network"] = {**network_cost(entry.arch, config["model"]),
                         "from": f"layer table of {rel(run / 'config.json')} 'model'"}

    truth = pair / "heldout"
    result["scores"] = {}
    for kind, (pred, csv_name, extra) in PREDICTIONS.items():
        if not (pair / csv_name).is_file():
            if not (truth / "truth").is_dir():
                held_out(run, truth)
            shutil.rmtree(pair / pred, ignore_errors=True)
            say(f"{entry.name} seed {seed}: predicting the held-out slices"
                + (" with --tta 8" if extra else ""))
            log = pair / f"{pred}.log"
            cmd = [sys.executable, "-m", "minunet.predict", "--checkpoint",
                   str(run / "best.npz"), *sorted(map(str, (truth / "images").iterdir())),
                   "--out", str(pair / pred), *extra,
                   *(["--device", device] if device else [])]
            done = run_logged(cmd, log)
            if done.returncode != 0:
                return failed(f"predict ({kind})", log, done.returncode)
            log = pair / f"{csv_name[:-4]}.log"
            done = run_logged([sys.executable, "-m", "minunet.evaluate", str(pair / pred / "prob"),
                               str(truth / "truth"), "--csv", str(pair / csv_name)], log)
            if done.returncode != 0:
                return failed(f"evaluate ({kind})", log, done.returncode)
        result["scores"][kind] = {**read_all_row(pair / csv_name), "csv": rel(pair / csv_name),
                                  "predictions": rel(pair / pred / "prob"),
                                  "checkpoint": rel(run / "best.npz"),
                                  "tta": 8 if extra else 1}
    if (truth / "truth").is_dir():
        result["heldout"] = sorted(p.stem for p in (truth / "truth").iterdir())

    if not (run / "curve.csv").is_file():
        say(f"{entry.name} seed {seed}: scoring the kept checkpoints (curve)")
        log = pair / "curve.log"
        done = run_logged([sys.executable, "-m", "minunet.curve", str(run)], log)
        if done.returncode != 0:
            return failed("curve", log, done.returncode)
    result["curve"] = {"csv": rel(run / "curve.csv"), "rows": read_curve(run / "curve.csv")}
    result["status"] = "done"
    atomic_write_text(pair / "result.json", json.dumps(result, indent=1))
    v = result["scores"]
    say(f"{entry.name} seed {seed}: done; held-out V_rand {v['plain']['v_rand']:.4f}, with "
        f"--tta 8 {v['tta8']['v_rand']:.4f} ({rel(pair / 'result.json')})")
    return result
