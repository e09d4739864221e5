"""The learning curve of a run: `python -m minunet.curve RUN [RUN ...]`.

A run trained with --keep-checkpoints keeps the checkpoint of every validation in
RUN/checkpoints/. This scores each of them on the run's held-out images, the ones it never
trained on nor chose a checkpoint with (--holdout; ISBI 2012 by default slices 25-29 of 30):
the four ISBI 2012 scores, exactly as `predict` + `evaluate` compute them (probabilities
rounded to 8 bits as predict writes them, each score at its best threshold, the stack pooled).

    RUN/curve.csv   iteration, elapsed_s (wall-clock seconds of training when the checkpoint was
                    written, from metrics.csv), pixel_error, rand_error, v_rand, v_info
    --plot FILE     V_rand and pixel error against wall-clock minutes and against iterations,
                    one line per RUN (default: RUN/curve.png for one run)

The runs are only read: the held-out images are the ones named in RUN/config.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from minunet.data.loaders import DataError, as_holdout, as_index_list, load_dataset
from minunet.evaluation import metrics
from minunet.files import atomic_write_text, save_figure
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint

COLUMNS = ("iteration", "elapsed_s", "pixel_error", "rand_error", "v_rand", "v_info")


def held_out_samples(run: Path) -> list:
    """The labelled images RUN kept out of training and validation (from its config.json)."""
    train = json.loads((require_run(run) / "config.json").read_text())["train"]
    data = load_dataset(train["data"], as_index_list(train.get("val", "")),
                        train.get("mask_kind", "binary"), train.get("normalize", "max"),
                        as_holdout(train.get("holdout", "none")))
    if not data.holdout:
        raise DataError(f"{run} held no images out (its data {train['data']}); train with "
                        "--holdout to keep images for scoring")
    if data.n_classes != 2:
        raise DataError(f"{run}: the ISBI scores need a two-class model, this one has "
                        f"{data.n_classes} classes")
    return data.holdout


def require_run(run: Path) -> Path:
    if not (run / "config.json").is_file():
        raise DataError(f"{run} is not a run folder (no config.json); give the --out folder "
                        "of python -m minunet.train")
    return run


def elapsed_by_iteration(run: Path) -> dict[int, float]:
    """{iteration: elapsed_s} from RUN/metrics.csv (rows without elapsed_s are left out)."""
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["iteration"]): float(r["elapsed_s"]) for r in csv.DictReader(f)
                if r.get("elapsed_s")}


def score_run(run: Path, progress: bool = True) -> list[dict]:
    """One row (COLUMNS) per kept checkpoint of RUN, in iteration order."""
    from tqdm import tqdm

    from minunet.inference.outputs import to_uint8
    from minunet.inference.tiles import predict

    files = sorted((require_run(run) / "checkpoints").glob("*.npz"))
    if not files:
        raise DataError(f"{run}/checkpoints holds no checkpoints: train with "
                        "--keep-checkpoints to keep one at every validation")
    samples = held_out_samples(run)
    elapsed = elapsed_by_iteration(run)
    rows = []
    for path in tqdm(files, desc=f"curve {run.name}", unit="checkpoint",
                     disable=None if progress else True):
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path).eval()
        counts = [metrics.slice_counts(to_uint8(predict(model, s.image)[1]) / 255.0,
                                       s.label == 1) for s in samples]
        rows.append({"iteration": ckpt.iteration, "elapsed_s": elapsed.get(ckpt.iteration, ""),
                     **metrics.scores_of(counts).as_dict()})
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    text = io.StringIO()
    w = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def plot_curves(curves: dict[str, list[dict]], path: Path, title: str = "") -> Path:
    """2 x 2 panels: held-out V_rand (top) and pixel error (bottom) against wall-clock minutes
    (left) and iterations (right); one line per run (label: rows)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), dpi=100)
    axes = fig.subplots(2, 2, sharey="row")
    for c, (label, rows) in enumerate(curves.items()):
        it = np.array([r["iteration"] for r in rows], float)
        minutes = np.array([float(r["elapsed_s"]) / 60 if r["elapsed_s"] != "" else np.nan
                            for r in rows])
        for r, key in enumerate(("v_rand", "pixel_error")):
            y = np.array([r_[key] for r_ in rows], float)
            axes[r, 0].plot(minutes, y, "o-", ms=3, color=f"C{c}", label=label)
            axes[r, 1].plot(it, y, "o-", ms=3, color=f"C{c}", label=label)
    for r, name in enumerate(("V_rand (higher is better)", "pixel error (lower is better)")):
        axes[r, 0].set_ylabel(name)
        for ax in axes[r]:
            ax.grid(alpha=0.3)
    axes[1, 0].set_xlabel("wall-clock minutes of training")
    axes[1, 1].set_xlabel("iteration")
    axes[0, 0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minunet.curve",
        description="Score every kept checkpoint of a run (--keep-checkpoints) on the run's "
                    "held-out images: RUN/curve.csv, and a figure of held-out V_rand and pixel "
                    "error against wall-clock minutes and iterations.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of python -m minunet.train")
    p.add_argument("--plot", metavar="FILE",
                   help="the figure (PNG); default RUN/curve.png for one run, none for several")
    p.add_argument("--title", default="", help="a title for the figure")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot and not args.plot.lower().endswith(".png"):
        print(f"error: --plot {args.plot} must name a .png file", file=sys.stderr)
        return 2
    curves = {}
    runs = [Path(r) for r in args.runs]
    names = [r.name for r in runs]
    try:
        for run in runs:
            rows = score_run(run)
            write_csv(rows, run / "curve.csv")
            label = run.name if names.count(run.name) == 1 else f"{run.parent.name}/{run.name}"
            curves[label] = rows
            last = rows[-1]
            print(f"{run}: {len(rows)} checkpoints; at iteration {last['iteration']}: "
                  f"V_rand {last['v_rand']:.4f}, V_info {last['v_info']:.4f}, pixel error "
                  f"{last['pixel_error']:.4f}, Rand error {last['rand_error']:.4f} "
                  f"({run / 'curve.csv'})")
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot = args.plot or (str(Path(args.runs[0]) / "curve.png") if len(args.runs) == 1 else None)
    if plot:
        print(f"figure: {plot_curves(curves, Path(plot), args.title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
