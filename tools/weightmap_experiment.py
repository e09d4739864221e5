"""Does the paper's weight map help separate touching cells? Train with and without it, score.

    python tools/weightmap_experiment.py --seeds 0 1 2 --iters 1000 --out weightmap.json

For each seed, trains the CPU preset (base 8, tile 316) twice on the built-in touching cells
(`cells:n=16,size=384`; images 12-15 held out, never seen in training or validation), once
with the paper's weight map (w0 = 10, sigma = 5 px) and once with `--no-weight-map`, the
same seed, data and iterations otherwise. Each model (last.npz: the poly schedule has decayed
the learning rate to zero) predicts the held-out images whole (overlap-tile), and we score

- instances: `minunet.inference.instances.label_cells` turns P(cell) into cells, scored against the
  true instances with `minunet.evaluation.objects` (F1 at IoU >= 0.5, SEG: the mean Jaccard index of
  each true cell with the predicted cell that covers more than half of it);
- the separation borders: of the pixels on the borders between touching cells
  (`separation_borders` of the true instances), the fraction predicted as cell (P > 0.5),
  that is, where two cells would merge;
- the pixel error (1 - accuracy at 0.5) over all held-out pixels.

Writes a JSON file with one record per run and prints a table with the mean and the spread
(standard deviation over the seeds) of each score. Tutorial 05 quotes the numbers; this takes
about 15 minutes on 2 CPU cores for 3 seeds x 1000 iterations (measured: 14).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import minunet.train
from minunet.data import load_dataset, separation_borders
from minunet.evaluation.objects import object_counts, object_scores
from minunet.inference.instances import label_cells
from minunet.inference.tiles import predict
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint

DATA = "cells:n=16,size=384"
HOLDOUT = "12-15"


def score(model, samples) -> dict:
    counts, border_hits, border_n, wrong, total = [], 0, 0, 0, 0
    for s in samples:
        prob = predict(model, s.image)[1]
        counts.append(object_counts(s.instances, label_cells(prob)))
        borders = separation_borders(s.instances)
        border_hits += int((prob[borders] > 0.5).sum())
        border_n += int(borders.sum())
        wrong += int(((prob > 0.5) != (s.label == 1)).sum())
        total += prob.size
    obj = object_scores(counts)
    return {"f1": obj["f1"], "seg": obj["seg"], "border_as_cell": border_hits / border_n,
            "pixel_error": wrong / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--out", default="weightmap.json")
    args = p.parse_args()
    data = load_dataset(DATA, holdout=[12, 13, 14, 15])
    records = []
    work = Path(tempfile.mkdtemp(prefix="minunet-weightmap-"))
    for seed in args.seeds:
        for weight_map in (True, False):
            run = work / f"s{seed}_{'map' if weight_map else 'plain'}"
            cli = ["--preset", "cpu", "--data", DATA, "--holdout", HOLDOUT, "--device", "cpu",
                   "--seed", str(seed), "--iters", str(args.iters), "--val-every",
                   str(args.iters), "--out", str(run)] + ([] if weight_map else ["--no-weight-map"])
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert minunet.train.main(cli) == 0
            model = model_from_checkpoint(load_checkpoint(run / "last.npz"), run / "last.npz")
            rec = {"seed": seed, "weight_map": weight_map, "iters": args.iters,
                   "seconds": time.perf_counter() - start, **score(model, data.holdout)}
            records.append(rec)
            print(json.dumps(rec), flush=True)
            Path(args.out).write_text(json.dumps(records, indent=1) + "\n")
            shutil.rmtree(run)
    work.rmdir()  # every run folder was removed after scoring
    for key in ("f1", "seg", "border_as_cell", "pixel_error"):
        for wm in (True, False):
            v = np.array([r[key] for r in records if r["weight_map"] == wm])
            print(f"{key:15s} {'with' if wm else 'without':8s} the map: mean {v.mean():.3f}, "
                  f"std {v.std(ddof=1) if v.size > 1 else 0:.3f}, runs {np.round(v, 3).tolist()}")


if __name__ == "__main__":
    main()
