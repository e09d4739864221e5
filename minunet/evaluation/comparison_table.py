"""The family comparison's table and figure (`python -m minunet.compare`), read from the
result.json files of its runs (minunet/training/comparison.py), so that every number in them
traces back to a run folder:

    OUT/table.md    one row per entry: the mean over the seeds done and, in brackets, the
                    min-max over them, of the held-out scores from best.npz without and with
                    --tta 8 (ISBI 2012: pixel error, Rand error, V_rand, V_info; cells: F1,
                    SEG, AP of the objects); parameters, GFLOP at 512 x 512 (the valid U-Net at
                    572 x 572), steps in the budget, peak memory of the training process,
                    seeds done; below, which entries score above which beyond the
                    spread over seeds (`apart`), and the failed runs with their logs
    OUT/table.csv   the same numbers unrounded (mean, min, max in columns), and the result.json
                    files each row comes from (column results; paths relative to OUT)
    OUT/figure.png  V_rand against minutes of training (with calibrated steps iteration x
                    step time, else wall-clock) for every entry, the mean over seeds (line)
                    and the min-max band, each seed's curve interpolated linearly on a
                    common grid of the minutes all its seeds cover. ISBI 2012: the held-out
                    V_rand of the kept checkpoints (curve.csv); cells: the validation V_rand
                    (pixels) the training logged (run/metrics.csv), as scoring held-out
                    objects per kept checkpoint would predict each with --instances, a run
                    of its own

The task (TABLES: 'isbi2012', 'cells') picks the score columns and the note under the table;
the rest of a row is the same for both.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from minunet.files import atomic_write_text, save_figure

SCORES = ("pixel_error", "rand_error", "v_rand", "v_info")
SCORE_NAMES = {"pixel_error": "pixel error", "rand_error": "Rand error", "v_rand": "V_rand",
               "v_info": "V_info", "f1": "F1", "seg": "SEG", "ap": "AP"}
# task -> (the scores in table.csv's order, in table.md's order, the note on them in table.md)
TABLES = {
    "isbi2012": (SCORES, ("v_rand", "v_info", "pixel_error", "rand_error"),
                 "Scores of best.npz (chosen on the validation slices) on the held-out slices "
                 "only, as the ISBI 2012 challenge's Fiji code computes them, each at its best "
                 "threshold; +TTA: `predict --tta 8`."),
    "cells": (("f1", "seg", "ap"), ("f1", "seg", "ap"),
              "Object scores of best.npz (chosen on the validation images) on the three "
              "held-out images of the README's cells walk-through (OUT/heldout: "
              "touching_cells(size, seed=(99, i)), i = 0..2, never trained on): `predict "
              "--instances`, then `evaluate --instances`, pooled over the three images (its "
              "'all' row): F1 of the matching at IoU >= 0.5, SEG (the Cell Tracking "
              "Challenge's), AP = TP / (TP + FP + FN) averaged over IoU 0.5:0.95; +TTA: "
              "`predict --instances --tta 8`."),
}
KINDS = {"plain": "", "tta8": "_tta8"}  # result.json's scores -> the column suffix
GRID = 200  # points of the common time grid of the figure


def load_results(out: Path, names: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    """{entry: [result.json of each seed that has one, in seed order]} (the path added as
    'result', relative to OUT)."""
    found = {}
    for name in names:
        found[name] = []
        for seed in seeds:
            path = out / name / f"seed{seed}" / "result.json"
            if path.is_file():
                found[name].append({**json.loads(path.read_text()),
                                    "result": str(path.relative_to(out))})
    return found


def _spread(values: list[float], prefix: str) -> dict:
    if not values:
        return {f"{prefix}_mean": "", f"{prefix}_min": "", f"{prefix}_max": ""}
    a = np.asarray(values, float)
    return {f"{prefix}_mean": float(a.mean()), f"{prefix}_min": float(a.min()),
            f"{prefix}_max": float(a.max())}


def summarize(name: str, results: list[dict], n_seeds: int, cost: dict | None = None,
              about: dict | None = None, task: str = "isbi2012") -> dict:
    """One table row (CSV columns) of an entry from its results. cost: the network's
    parameters and GFLOP when no run of it finished (they come from the runs otherwise);
    about: arch, loss, options where no result says them; task: a key of TABLES."""
    done = [r for r in results if r.get("status") == "done"]
    failed = [r for r in results if r.get("status") != "done"]
    first = (done or results or [about or {}])[0]
    net = done[0]["network"] if done else (cost or {})
    row = {"entry": name, "arch": first.get("arch", ""), "loss": first.get("loss", ""),
           "options": " ".join(f"{k}={v}" for k, v in first.get("options", {}).items()),
           "seeds": n_seeds, "seeds_done": len(done), "seeds_failed": len(failed),
           "params": net.get("params", ""), "gflop": net.get("gflop", ""),
           "gflop_size": net.get("size", "")}
    for kind, suffix in KINDS.items():
        for s in TABLES[task][0]:
            row |= _spread([r["scores"][kind][s] for r in done], s + suffix)
    row |= _spread([r["train"]["steps"] for r in done], "steps")
    row |= _spread([r["train"]["wall_s"] for r in done], "train_s")
    peaks = [r["train"]["peak_rss_mb"] for r in done if r["train"].get("peak_rss_mb")]
    row["peak_rss_mb"] = max(peaks) if peaks else ""
    row["machines"] = ";".join(sorted({machine_label(r["train"].get("machine")) for r in done}))
    row["results"] = ";".join(r["result"] for r in done)
    row["failed"] = ";".join(f"seed{r['seed']}: {r.get('step', '?')} exit {r.get('returncode')}"
                             f" ({r.get('log', '')})" for r in failed)
    return row


def machine_label(m: dict | None) -> str:
    """E.g. 'AMD EPYC, 2 cores, avx2, openblas Haswell', from a run's config.json 'machine'."""
    if not m:
        return "not recorded"
    parts = [m.get("cpu") or "CPU ?", f"{m.get('cores', '?')} cores", m.get("simd") or "",
             m.get("blas") or "", m.get("gpu") or ""]
    return ", ".join(p for p in parts if p)


def columns(task: str = "isbi2012") -> list[str]:
    """table.csv's columns for a task (a key of TABLES)."""
    cols = ["entry", "arch", "loss", "options", "seeds", "seeds_done", "seeds_failed", "params",
            "gflop", "gflop_size"]
    for suffix in KINDS.values():
        cols += [f"{s}{suffix}_{m}" for s in TABLES[task][0] for m in ("mean", "min", "max")]
    cols += [f"{k}_{m}" for k in ("steps", "train_s") for m in ("mean", "min", "max")]
    return cols + ["peak_rss_mb", "machines", "results", "failed"]


def write_csv(rows: list[dict], path: Path, task: str = "isbi2012") -> Path:
    text = io.StringIO()
    w = csv.DictWriter(text, columns(task), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def _cell(row: dict, key: str, fmt: str = "{:.3f}") -> str:
    mean, lo, hi = row[f"{key}_mean"], row[f"{key}_min"], row[f"{key}_max"]
    if mean == "":
        return "-"
    if row["seeds_done"] < 2:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ({fmt.format(lo)}-{fmt.format(hi)})"


def markdown(rows: list[dict], title: str = "", task: str = "isbi2012",
             calibration: dict | None = None) -> str:
    """table.md: the rows, then what the numbers are and the failed runs. calibration: the
    comparison's calibration.json (minunet/training/calibration.py), where its budget was
    spent as calibrated steps."""
    _, shown, note = TABLES[task]
    head = ["entry", "loss", "parameters", "GFLOP@512", "steps", "peak MB"]
    for s in shown:
        head += [SCORE_NAMES[s], f"{SCORE_NAMES[s]} +TTA"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join([*head, "seeds"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        gflop = "-" if r["gflop"] == "" else \
            f"{r['gflop']:.2f}" + ("" if r["gflop_size"] == 512 else f" (at {r['gflop_size']})")
        cells = [r["entry"], r["loss"] or "-",
                 "-" if r["params"] == "" else f"{r['params']:,}", gflop,
                 _cell(r, "steps", "{:,.0f}"),
                 "-" if r["peak_rss_mb"] == "" else f"{r['peak_rss_mb']:,.0f}"]
        for s in shown:
            cells += [_cell(r, s), _cell(r, s + "_tta8")]
        seeds = f"{r['seeds_done']}/{r['seeds']}" + \
            (f", {r['seeds_failed']} failed" if r["seeds_failed"] else "")
        lines.append("| " + " | ".join([*cells, seeds]) + " |")
    lines += ["", "Mean over the seeds done, in brackets the min-max over them (two or more "
              f"seeds). {note} GFLOP: forward, 2 per multiply-add, at "
              "512 x 512 from the network's own layer table (the valid U-Net, which takes no "
              "512 x 512 tile, at 572 x 572: marked). Steps: the iterations of the runs "
              "(run/config.json): " + ("the budget over the network's step time, measured side "
              "by side with the others' (calibration.json)" if calibration else
                                       "those --iters, or each run's own --time budget, "
                                       "chose") + ". "
              "Peak MB: the largest peak resident memory (VmHWM) of "
              "the training processes. Every number comes from the result.json files that "
              "table.csv names (column results)."]
    machines = sorted({m for r in rows for m in r["machines"].split(";") if m})
    if calibration:  # the steps are the calibrating machine's; the runs' only take time
        lines += ["", f"Steps measured on: {machine_label(calibration.get('machine'))} "
                  f"({calibration.get('date', '?')}, {calibration['seconds']:g} s of training "
                  "each). A run made on another machine trains the same steps on the same "
                  "tiles; only its floating-point rounding (BLAS kernels) and its wall-clock "
                  "differ. The runs ran on: "
                  + ("; ".join(machines) if machines else "-") + "."]
    elif len(machines) == 1:  # a --time budget buys the steps a machine gives: say which
        lines += ["", f"Machine: {machines[0]}."]
    elif machines:
        ran = {m: ", ".join(r["entry"] for r in rows if m in r["machines"].split(";"))
               for m in machines}
        lines += ["", f"The runs ran on {len(machines)} machines, whose steps in one budget "
                  "differ: " + "; ".join(f"{m} ({ran[m]})" for m in machines) + "."]
    if sum(r["seeds_done"] >= 2 for r in rows) >= 2:  # what the seeds' spread allows
        main = shown[0]
        said = []
        for key, label in ((main, SCORE_NAMES[main]), (main + "_tta8",
                                                         f"{SCORE_NAMES[main]} +TTA")):
            found = apart(rows, key)
            said.append(f"{label}: " + ("; ".join(found) if found else "none"))
        lines += ["", "Apart beyond the spread over seeds (an entry's lowest seed above the "
                  "other's highest, among entries with two or more seeds): " + ". ".join(said)
                  + "."]
    failed = [(r["entry"], f) for r in rows for f in r["failed"].split(";") if f]
    if failed:
        lines += ["", "Failed:", ""] + [f"- {e} {f}" for e, f in failed]
    return "\n".join(lines) + "\n"


def apart(rows: list[dict], key: str) -> list[str]:
    """Which entries score above which beyond the spread over seeds: 'a above b, c' for each
    entry a whose lowest seed of `key` (a higher-is-better score column, e.g. 'v_rand' or
    'v_rand_tta8') lies above the highest seed of b, among the entries with two or more seeds
    done. A one-sided, seed-by-seed reading: disjoint min-max ranges, no test of significance
    (three seeds cannot give one)."""
    done = sorted((r for r in rows if r["seeds_done"] >= 2 and r[f"{key}_mean"] != ""),
                  key=lambda r: -r[f"{key}_mean"])
    lines = []
    for a in done:
        below = [b["entry"] for b in done if a[f"{key}_min"] > b[f"{key}_max"]]
        if below:
            lines.append(f"{a['entry']} above {', '.join(below)}")
    return lines


def curves_of(results: list[dict], out: Path | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(minutes, V_rand) of each finished seed: the held-out curve of result.json (ISBI 2012,
    from `curve`) or, where it has none (cells), the validation rows of OUT/<run>/metrics.csv.
    Minutes of training: for a run with calibrated steps iteration * its calibrated step time
    (the same on every machine), else the wall-clock seconds recorded (rows with a time)."""
    curves = []
    for r in results:
        if r.get("status") != "done":
            continue
        rows = r["curve"]["rows"] if "curve" in r else _metrics_rows(out, r)
        calibrated = (r.get("train") or {}).get("calibration")
        if calibrated:
            minutes = [c["iteration"] * calibrated["step_s"] / 60 for c in rows]
        else:
            rows = [c for c in rows if c["elapsed_s"] is not None]
            minutes = [c["elapsed_s"] / 60 for c in rows]
        if rows:
            curves.append((np.array(minutes), np.array([c["v_rand"] for c in rows])))
    return curves


def _metrics_rows(out: Path | None, result: dict) -> list[dict]:
    """The validations of a run's metrics.csv (OUT/<run>/metrics.csv) as curve rows:
    [{'iteration', 'elapsed_s', 'v_rand'}], rows without a V_rand left out; [] without OUT or
    the file."""
    path = out / result["run"] / "metrics.csv" if out is not None and result.get("run") else None
    if path is None or not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{"iteration": int(row["iteration"]),
                 "elapsed_s": float(row["elapsed_s"]) if row.get("elapsed_s") else None,
                 "v_rand": float(row["v_rand"])}
                for row in csv.DictReader(f) if row.get("v_rand")]


def band(curves: list[tuple[np.ndarray, np.ndarray]]):
    """(grid, mean, min, max): the curves interpolated linearly on GRID minutes from the
    latest first point to the earliest last point of them (the minutes every seed covers)."""
    lo = max(t[0] for t, _ in curves)
    hi = min(t[-1] for t, _ in curves)
    grid = np.linspace(lo, hi, GRID) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, t, y) for t, y in curves])
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def plot(results: dict[str, list[dict]], path: Path, title: str = "",
         ylabel: str = "held-out V_rand (higher is better)", out: Path | None = None) -> Path:
    """figure.png: V_rand against minutes of training per entry, mean over seeds and min-max
    band (`curves_of`; OUT for the runs' metrics.csv where result.json has no curve)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.subplots()
    for c, (name, res) in enumerate(results.items()):
        curves = curves_of(res, out)
        if not curves:
            continue
        grid, mean, lo, hi = band(curves)
        color = f"C{c % 10}"
        ax.plot(grid, mean, "-" if len(grid) > 1 else "o", color=color,
                label=f"{name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            ax.fill_between(grid, lo, hi, color=color, alpha=0.2, lw=0)
    calibrated = any((r.get("train") or {}).get("calibration")
                     for res in results.values() for r in res)
    ax.set_xlabel("minutes of training (iteration x step time measured side by side)"
                  if calibrated else "wall-clock minutes of training")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.set_title(title or "held-out V_rand: mean over seeds, band min-max")
    fig.tight_layout()
    return save_figure(fig, path)
