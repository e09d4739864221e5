"""Compare the U-Net family: `python -m minunet.compare --data isbi2012:PATH`, or on the README's
cells walk-through, `python -m minunet.compare --data cells[:n=16,size=384]`.

For each entry (a network, its options and its loss; --nets) and each seed (--seeds), train for
the same budget (--time, default 10m) and score best.npz on held-out data without and with
--tta 8, each with the commands a user would type. The budget is spent as steps: first every
entry's step time is measured side by side on this machine (OUT/calibration.json, written once;
minunet/training/calibration.py), then each training runs `--iters floor(budget / its step
time)`, so the steps a network gets depend neither on the machine's load during its run nor on
the machine a later run is made on. The data kind chooses the task:

- isbi2012:PATH, by the ISBI 2012 protocol (docs/DESIGN.md): train with --keep-checkpoints,
  predict the held-out slices (the run's config.json names them; by default 25-29 of 30), score
  them with `evaluate`, and score every kept checkpoint with `curve` (held-out V_rand against
  wall-clock time);
- cells (alone: n=16,size=384, the walk-through's; n, size and seed may be given), as the
  README's "Cells: instances, object scores": train on touching cells, predict the three
  held-out images touching_cells(size, seed=(99, i)), i = 0..2 (written once into OUT/heldout)
  with `predict --instances`, score the cells with `evaluate --instances` (F1, SEG, AP).

Each step is a subprocess, logged beside its output, so a run that fails is reported as failed
and the others go on (exit status 1 at the end).

    OUT/compare.json                the settings every training shares (a rerun must match)
    OUT/calibration.json            the step times measured side by side, the machine, and
                                    each entry's steps (--iters) and --val-every
    OUT/heldout/                    cells: images/{i}.png, labels/{i}.tif (16-bit instances)
    OUT/<entry>/seed<K>/            run/ (the training's run folder), train.log, train.json,
                                    heldout/ (ISBI), pred/, pred_tta8/, eval.csv,
                                    eval_tta8.csv, result.json (every number and its file)
    OUT/table.md, OUT/table.csv     one row per entry: mean and min-max over seeds of the
                                    scores (ISBI: the four ISBI scores; cells: F1, SEG, AP)
                                    without and with TTA, parameters, GFLOP at 512 x 512,
                                    steps, peak memory, seeds done
    OUT/figure.png                  V_rand against minutes, mean and min-max band: ISBI
                                    the held-out slices' (kept checkpoints), cells the
                                    validation images' (the training's metrics.csv; see
                                    minunet/evaluation/comparison_table.py)

Every training validates --validations times (default 10) evenly over its steps, so that a
network with slow steps gets as many learning-curve points as a fast one. OUT defaults
to runs/compare (ISBI) or runs/compare_cells (cells); the project's own comparison lives in
docs/compare/ (its .gitignore keeps the records and leaves checkpoints and predictions out).
Resumable: run it again with the same options and it skips every entry+seed with a
result.json, and redoes a half-done one from its first missing step. A training that was
interrupted starts again from iteration 0 (--overwrite). The library half is
minunet/training/comparison.py (the runs), minunet/training/calibration.py (the steps) and
minunet/evaluation/comparison_table.py (the table and the figure). Each run's config.json
records its machine (CPU, cores, SIMD, BLAS kernel) and table.md names the machine the steps
were measured on; runs made elsewhere take other wall-clock times for the same steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minunet.evaluation.comparison_table import load_results, markdown, plot, summarize, write_csv
from minunet.exits import DONE, FAILED, INTERRUPTED, usage_error
from minunet.files import atomic_write_text
from minunet.training.comparison import (
    ENTRIES,
    HELDOUT_SEED,
    Interrupted,
    Settings,
    cells_data,
    cells_heldout,
    cells_options,
    check_entry,
    entry_cost,
    run_pair,
    select_entries,
)

FORWARDED = ("val", "holdout", "tile", "val_every", "validations")  # train options every
# training gets
VALIDATIONS = 10  # validations of every timed training unless --val-every is given: one
# learning-curve point (ISBI) per tenth of the budget, whatever the network's step costs


def build_parser() -> argparse.ArgumentParser:
    entries = "; ".join(f"{e.name} ({e.arch}" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in e.options.items()) + ")"
        for e in ENTRIES.values())
    p = argparse.ArgumentParser(
        prog="python -m minunet.compare",
        description="Train, predict and score every network of the U-Net family on ISBI 2012 "
                    "or on the README's touching cells by the same protocol and time budget, "
                    "several seeds each, resumably; OUT/table.md, OUT/table.csv and "
                    "OUT/figure.png.")
    p.add_argument("--data", default="", metavar="isbi2012:PATH|cells[:n=16,size=384]",
                   help="isbi2012:PATH: the ISBI 2012 slices (images/ and labels/) or stacks, "
                        "pixel scores; cells: the README's cells walk-through (n=16, size=384 "
                        "unless given; seed=K: another training set), object scores on its "
                        "three held-out images (not needed with --table-only on an --out "
                        "that holds a comparison)")
    p.add_argument("--out", default=None,
                   help="the comparison's folder (default runs/compare, for cells "
                        "runs/compare_cells); a rerun with the same --out goes on where the "
                        "last one stopped")
    p.add_argument("--nets", default="", metavar="ENTRY,...",
                   help=f"the entries to run, in this order (default all): {entries}")
    p.add_argument("--seeds", default="0,1,2", help="seeds, '0,1,2' or '0-2' (default 0,1,2)")
    p.add_argument("--time", default=None,
                   help="the wall-clock budget of every training (default 10m)")
    p.add_argument("--iters", type=int, default=None,
                   help="train every run for N iterations instead of a --time budget (tests "
                        "and quick looks; not the protocol: the networks' steps cost unlike "
                        "amounts of time)")
    p.add_argument("--preset", default="cpu",
                   help="the train preset of every entry (default cpu: the U-Net's CPU recipe; "
                        "a family network keeps its entry's widths)")
    for name, text in (("val", "validation slices (default: the ISBI split, 23-24 of 30; "
                               "cells: the last sixth, 3 of 16)"),
                       ("holdout", "held-out slices (default: the ISBI split, 25-29 of 30; "
                                   "not for cells, whose held-out images are the "
                                   "walk-through's)"),
                       ("tile", "training tile of every entry (default: the preset's, for "
                                "each network its nearest valid size below)"),
                       ("val_every", "iterations between validations (default: with --iters "
                                     "the preset's; with --time, see --validations)"),
                       ("validations", f"validations of every --time training, evenly over "
                                       f"its budget (default {VALIDATIONS} unless --val-every "
                                       f"is given): each network's curve gets as many points")):
        p.add_argument("--" + name.replace("_", "-"), dest=name,
                       type=int if name in ("tile", "val_every", "validations") else str,
                       help=text)
    p.add_argument("--device", default="", choices=("", "auto", "cpu", "cuda"),
                   help="device of training and prediction (default: train's, auto)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the entry+seeds whose result.json says failed (otherwise "
                        "they are kept as failed, like the finished ones)")
    p.add_argument("--calibrate-only", action="store_true",
                   help="measure the entries' step times side by side and write "
                        "OUT/calibration.json (the steps the budget buys each), train nothing "
                        "(a comparison with a --time budget does this first where "
                        "calibration.json is missing)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: write the table and the figure from the results so far "
                        "(on an --out holding a comparison: with the settings its "
                        "compare.json records, whatever --data, --time, ... say)")
    return p


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in filter(None, (s.strip() for s in text.split(","))):
        lo, dash, hi = part.partition("-")
        if not (lo.isdigit() and (hi.isdigit() if dash else True)) or (dash and int(hi) < int(lo)):
            raise ValueError(f"--seeds {text!r} not understood: give seeds '0,1,2' or '0-2'")
        seeds += range(int(lo), int(hi if dash else lo) + 1)
    if not seeds or len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds {text!r}: give each seed once, at least one")
    return seeds


def settings_of(args) -> Settings:
    """The checked settings: data an ISBI 2012 folder holding slices out, or the cells walk-
    through's spec; a budget or iterations; ValueError (DataError) naming what is wrong."""
    from minunet.data.loaders import as_holdout, as_index_list, load_dataset, split_indices
    from minunet.training.config import parse_duration

    kind, _, path = args.data.partition(":")
    if kind == "cells":
        opts = cells_options(args.data)
        if args.holdout is not None:
            raise ValueError("--holdout is for isbi2012: the cells' held-out images are the "
                             f"walk-through's touching_cells(size, seed=({HELDOUT_SEED}, i)), "
                             "i = 0..2, in OUT/heldout; leave it out")
        if args.val:
            split_indices(opts["n"], as_index_list(args.val))
        data = cells_data(opts)
    elif kind == "isbi2012" and path:
        data = f"isbi2012:{Path(path).resolve()}"
        loaded = load_dataset(data, as_index_list(args.val or ""), "binary", "auto",
                              as_holdout(args.holdout or ""))
        if not loaded.holdout:
            raise ValueError(f"--data {args.data} holds no slice out to score; give --holdout")
    else:
        raise ValueError(f"--data {args.data}: the comparison follows the ISBI 2012 protocol "
                         "or the README's cells walk-through; give --data isbi2012:PATH or "
                         "--data cells[:n=16,size=384]")
    if args.calibrate_only and (args.iters is not None or args.table_only):
        raise ValueError("--calibrate-only measures the steps a --time budget buys each entry; "
                         "leave out " + ("--iters" if args.iters is not None else
                                         "--table-only"))
    if args.iters is not None and args.time is not None:
        raise ValueError("--time and --iters both set the length of the trainings: give one")
    if args.iters is not None and args.iters < 1:
        raise ValueError(f"--iters must be an integer >= 1, got {args.iters}")
    time = "" if args.iters else (args.time or "10m")
    if time:
        parse_duration(time)
    if args.validations is not None and not time:
        raise ValueError("--validations spreads validations over a --time budget; with --iters "
                         "give --val-every")
    if args.validations is not None and args.val_every is not None:
        raise ValueError("--validations and --val-every both set when to validate: give one")
    forwarded = {k: getattr(args, k) for k in FORWARDED if getattr(args, k) is not None}
    if time and args.val_every is None and args.validations is None:
        forwarded["validations"] = VALIDATIONS
    if args.device:
        forwarded["device"] = args.device
    return Settings(data, time, args.iters, args.preset, forwarded)


def saved_settings(out: Path) -> Settings | None:
    """The settings OUT/compare.json records, None where there is none."""
    path = out / "compare.json"
    if not path.is_file():
        return None
    record = dict(json.loads(path.read_text())["settings"])
    record.pop("steps", None)  # Settings.record() says it again for a time budget
    return Settings(record.pop("data"), record.pop("time", ""), record.pop("iters", None),
                    record.pop("preset", "cpu"), record)


def check_same_settings(out: Path, settings: Settings) -> None:
    """A rerun into OUT must share its settings: results of other budgets are not mixed."""
    saved = out / "compare.json"
    if not saved.is_file():
        return
    before = json.loads(saved.read_text())["settings"]
    now = settings.record()
    differ = [f"{k} {now.get(k)!r} (there: {before.get(k)!r})"
              for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if differ:
        raise ValueError(f"--out {out} holds a comparison with other settings: "
                         f"{'; '.join(differ)}; give the same options, or name another --out")


def calibration_of(out: Path, entries, settings: Settings, command: str,
                   say=print) -> dict:
    """OUT/calibration.json (minunet/training/calibration.py): read where it exists (it must
    hold every entry asked for, for this budget), else measured now for `entries` side by
    side and written with `command`, the command line that measured. ValueError naming the
    fix."""
    from minunet.training.calibration import calibrate
    from minunet.training.config import parse_duration, resolve_config

    path = out / "calibration.json"
    seconds = parse_duration(settings.time)
    if path.is_file():
        record = json.loads(path.read_text())
        missing = [e.name for e in entries if e.name not in record["entries"]]
        if missing or record["seconds"] != seconds:
            why = (f"has no steps for {', '.join(missing)} (its step times were measured side "
                   f"by side for {', '.join(record['entries'])})" if missing else
                   f"was measured for a budget of {record['seconds']:g} s, not {seconds:g} s")
            raise ValueError(f"{path} {why}: run those entries, or name another --out (a new "
                             "comparison measures all its entries together)")
        return record
    configs = {}
    for e in entries:
        given = settings.given(e, 0, out / "unused")
        configs[e.name] = resolve_config({**{k: v for k, v in given.items() if k != "out"},
                                          "keep_checkpoints": False})
    say(f"calibrating {len(configs)} entries side by side on this machine (the steps a "
        f"budget of {settings.time} buys each; {path})")
    record = calibrate(configs, seconds, settings.train_options.get("validations") or 1,
                       say=say)
    record["command"] = command
    atomic_write_text(path, json.dumps(record, indent=1))
    say("calibrated: " + ", ".join(f"{n} {c['step_s']:.3f} s a step, {c['iters']:,} steps"
                                   for n, c in record["entries"].items()))
    return record


def write_outputs(out: Path, entries, seeds: list[int], settings: Settings) -> list[dict]:
    """table.md, table.csv and figure.png from the result.json files so far."""
    task = settings.task
    results = load_results(out, [e.name for e in entries], seeds)
    rows = []
    for e in entries:
        done = [r for r in results[e.name] if r.get("status") == "done"]
        cost = None if done else entry_cost(e, settings)
        rows.append(summarize(e.name, results[e.name], len(seeds), cost,
                              {"arch": e.arch, "loss": e.loss, "options": e.options}, task))
    path = out / "calibration.json"
    calibration = json.loads(path.read_text()) if settings.time and path.is_file() else None
    length = f"--iters {settings.iters}" if settings.iters else \
        f"{settings.time} of training, steps measured side by side" if calibration else \
        f"--time {settings.time}"
    on = "ISBI 2012" if task == "isbi2012" else f"touching cells ({settings.data})"
    title = f"The U-Net family on {on}: {length}, seeds {','.join(map(str, seeds))}"
    atomic_write_text(out / "table.md", markdown(rows, title, task, calibration))
    write_csv(rows, out / "table.csv", task)
    if task == "isbi2012":
        plot(results, out / "figure.png", f"held-out V_rand, {length}\nmean over seeds, "
                                          "band min-max")
    else:  # no held-out curve (see comparison_table): the validation the training logged
        plot(results, out / "figure.png", f"validation V_rand (pixels), {length}\nmean over "
             "seeds, band min-max", "V_rand on the validation images, pixels (higher is "
             "better)", out)
    return rows


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        entries = select_entries(args.nets)
        seeds = parse_seeds(args.seeds)
        saved = saved_settings(Path(args.out)) if args.table_only and args.out else None
        if saved is None:
            if not args.data:
                raise ValueError("give --data isbi2012:PATH or --data cells[:n=16,size=384] "
                                 "(only --table-only on an --out holding a comparison needs "
                                 "none)")
            settings = settings_of(args)
            out = Path(args.out or ("runs/compare" if settings.task == "isbi2012" else
                                    "runs/compare_cells"))
            for e in entries:
                check_entry(e, settings)
            check_same_settings(out, settings)
    except (ValueError, FileNotFoundError) as e:  # DataError is a ValueError
        raise usage_error(e) from e
    if saved is not None:  # the table of the runs there, wherever their data lay
        return write_and_print(Path(args.out), entries, seeds, saved, DONE)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise usage_error(f"--out {out}: cannot create it ({e.strerror})") from e
    record = {"settings": settings.record(),
              "entries": {e.name: {"arch": e.arch, "options": e.options, "loss": e.loss,
                                   "note": e.note} for e in ENTRIES.values()}}
    if settings.task == "cells":
        size = cells_options(settings.data)["size"]
        record["heldout"] = {"folder": "heldout", "images": f"touching_cells({size}, seed=("
                             f"{HELDOUT_SEED}, i)), i = 0..2: images/i.png, labels/i.tif"}
        try:
            if not args.table_only:  # written once; where there, the same images or refused
                cells_heldout(out, size)
        except ValueError as e:
            raise usage_error(e) from e
    atomic_write_text(out / "compare.json", json.dumps(record, indent=1))
    if settings.time and not args.table_only:
        try:
            calibration = calibration_of(out, entries, settings, " ".join(
                ["python -m minunet.compare", *(sys.argv[1:] if argv is None else argv)]))
        except ValueError as e:
            raise usage_error(e) from e
        except KeyboardInterrupt:
            print("\ninterrupted while calibrating; no calibration.json was written",
                  file=sys.stderr)
            return INTERRUPTED
        settings.steps = {e.name: calibration["entries"][e.name] for e in entries}
        if args.calibrate_only:
            return DONE
    status = DONE
    if not args.table_only:
        try:
            for e in entries:
                for seed in seeds:
                    path = out / e.name / f"seed{seed}" / "result.json"
                    if path.is_file():
                        before = json.loads(path.read_text())
                        if before.get("status") == "done" or not args.retry_failed:
                            print(f"{e.name} seed {seed}: {before.get('status')}, skipped "
                                  f"({path})")
                            continue
                    run_pair(e, seed, settings, out, args.device or "")
        except (Interrupted, KeyboardInterrupt) as e:
            print(f"\ninterrupted{f': {e}' if str(e) else ''}; run the same command again to "
                  "go on (an interrupted training starts again from iteration 0)",
                  file=sys.stderr)
            status = INTERRUPTED
    return write_and_print(out, entries, seeds, settings, status)


def write_and_print(out: Path, entries, seeds: list[int], settings: Settings,
                    status: int) -> int:
    """Write the table and the figure, print the table; FAILED where a run failed."""
    rows = write_outputs(out, entries, seeds, settings)
    print((out / "table.md").read_text())
    print(f"wrote {out / 'table.md'}, {out / 'table.csv'}, {out / 'figure.png'}")
    if status == DONE and any(r["seeds_failed"] for r in rows):
        print("error: some runs failed (table.md lists them with their logs)", file=sys.stderr)
        status = FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
