"""`python -m minunet.compare`: the family comparison, end to end on a tiny ISBI-like folder
(two entries, --iters 4 instead of a --time budget, one seed; the folder is tests/conftest.py's
`isbi_like`) and on tiny touching cells (the valid U-Net and a padded network, --iters 2),
resumable, its table traceable to result.json; the cells' held-out set written once; failed
trainings reported while the others go on; usage errors in one line."""

import csv
import json
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import minunet.training.comparison as comparison
from minunet import backend
from minunet.compare import main as compare
from minunet.data.synthetic import touching_cells
from minunet.evaluation.comparison_table import band, columns, curves_of, machine_label

TINY = ["--seeds", "0", "--iters", "4", "--val-every", "2", "--preset", "tiny", "--device",
        "cpu"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_compare_end_to_end_resumable_and_traceable(isbi_like, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["--data", f"isbi2012:{isbi_like}", "--out", str(out), "--nets", "unet,unetpp", *TINY]
    assert compare(args) == 0
    for name in ("table.md", "table.csv", "figure.png", "compare.json"):
        assert (out / name).stat().st_size > 0, name
    table = {r["entry"]: r for r in rows(out / "table.csv")}
    assert list(table) == ["unet", "unetpp"]
    for row in table.values():
        result = json.loads((out / row["results"]).read_text())
        assert result["status"] == "done" and row["seeds_done"] == "1"
        assert result["heldout"] == ["05"]  # the run's own held-out slice, never trained on
        for kind, suffix in (("plain", ""), ("tta8", "_tta8")):
            scores = result["scores"][kind]
            by_evaluate = rows(out / scores["csv"])[-1]  # the 'all' row of evaluate --csv
            assert by_evaluate["slice"] == "all"
            for s in ("pixel_error", "rand_error", "v_rand", "v_info"):
                assert float(row[f"{s}{suffix}_mean"]) == scores[s] == float(by_evaluate[s])
        assert result["scores"]["tta8"]["tta"] == 8
        assert float(row["steps_mean"]) == result["train"]["steps"] == 4
        assert int(row["params"]) == result["network"]["params"] > 0
        assert float(row["peak_rss_mb"]) == result["train"]["peak_rss_mb"] > 50
        curve = rows(out / result["curve"]["csv"])
        assert [int(r["iteration"]) for r in curve] == [2, 4]
        assert (out / result["run"] / "config.json").is_file()
    assert table["unet"]["gflop_size"] == "572" and table["unetpp"]["gflop_size"] == "512"
    assert table["unetpp"]["loss"] == "bce_dice"
    md = (out / "table.md").read_text()
    assert "| unet | softmax_cross_entropy | 121,658 | 1.20 (at 572) | 4 |" in md
    here = machine_label(backend.machine())  # every run's config.json says where it ran
    assert {r["machines"] for r in table.values()} == {here} and f"Machine: {here}." in md

    # again: everything is done, nothing runs
    capsys.readouterr()
    logs = {p: p.stat().st_mtime_ns for p in out.rglob("*.log")}
    assert compare(args) == 0
    said = capsys.readouterr().out
    assert said.count("skipped") == 2 and ": training" not in said and "predicting" not in said
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.log")} == logs

    # the table again from the records alone, as from a clone whose data lie elsewhere (or
    # nowhere): the settings are those of compare.json, which stays as it was
    saved = (out / "compare.json").read_text()
    (out / "table.csv").unlink()
    for data in ([], ["--data", "isbi2012:/elsewhere", "--time", "5m"]):
        assert compare(["--out", str(out), "--nets", "unet,unetpp", "--seeds", "0",
                        "--table-only", *data]) == 0
        assert rows(out / "table.csv") == list(table.values())
        assert (out / "compare.json").read_text() == saved
    with pytest.raises(SystemExit):  # no comparison there: --data is needed
        compare(["--out", str(tmp_path / "none"), "--table-only"])
    assert "give --data isbi2012:PATH" in capsys.readouterr().err

    # half done: the TTA scores missing; only they are made again, the training is kept
    before = json.loads((out / "unetpp/seed0/result.json").read_text())
    (out / "unetpp/seed0/result.json").unlink()
    (out / "unetpp/seed0/eval_tta8.csv").unlink()
    assert compare(args) == 0
    said = capsys.readouterr().out
    assert "unetpp seed 0: predicting the held-out slices with --tta 8" in said
    assert ": training" not in said and "(curve)" not in said
    assert "predicting the held-out slices\n" not in said
    after = json.loads((out / "unetpp/seed0/result.json").read_text())
    assert after["scores"] == before["scores"] and after["train"] == before["train"]

    # a training that did not finish (no train.json): trained again from iteration 0
    (out / "unet/seed0/result.json").unlink()
    (out / "unet/seed0/train.json").unlink()
    assert compare(args) == 0
    said = capsys.readouterr().out
    assert "unet seed 0: training again from the start (--overwrite" in said
    assert json.loads((out / "unet/seed0/result.json").read_text())["status"] == "done"


def test_a_failed_training_is_reported_and_the_others_go_on(isbi_like, tmp_path, capsys,
                                                            monkeypatch):
    def failing(given, overwrite=False):
        return [sys.executable, "-c", f"print('diverged: {given['arch']}'); raise SystemExit(1)"]

    monkeypatch.setattr(comparison, "train_command", failing)
    out = tmp_path / "cmp"
    args = ["--data", f"isbi2012:{isbi_like}", "--out", str(out), "--nets", "unet,unetpp", *TINY]
    assert compare(args) == 1  # every entry was tried; the comparison failed
    table = {r["entry"]: r for r in rows(out / "table.csv")}
    assert [table[n]["seeds_failed"] for n in ("unet", "unetpp")] == ["1", "1"]
    assert "train exit 1 (unetpp/seed0/train.log)" in table["unetpp"]["failed"]
    assert "diverged: unetpp" in (out / "unetpp/seed0/train.log").read_text()
    assert int(table["unetpp"]["params"]) == 141_816  # from the entry, as no run finished
    md = (out / "table.md").read_text()
    assert "- unetpp seed0: train exit 1 (unetpp/seed0/train.log)" in md
    assert "| unetpp | bce_dice | 141,816 | 3.74 | - |" in md
    capsys.readouterr()
    assert compare(args) == 1  # kept as failed ...
    assert capsys.readouterr().out.count("failed, skipped") == 2
    assert compare([*args, "--retry-failed", "--nets", "unetpp"]) == 1  # ... unless retried
    assert "unetpp seed 0: train FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--nets", "unet,unet4"], "--nets: unknown entry 'unet4'; known: unet, unet-bn"),
    (["--seeds", "2-0"], "--seeds '2-0' not understood"),
    (["--time", "10m", "--iters", "5"], "--time and --iters both"),
    (["--time", "ten minutes"], "--time 'ten minutes' not understood"),
    (["--tile", "190"], "entry unet: --tile"),
    (["--holdout", "none"], "holds no slice out to score; give --holdout"),
    (["--iters", "5", "--validations", "3"], "--validations spreads validations over a --time"),
    (["--val-every", "5", "--validations", "3"], "--validations and --val-every both"),
])
def test_usage_errors_are_one_line_and_leave_nothing(isbi_like, tmp_path, capsys, extra,
                                                     message):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        compare(["--data", f"isbi2012:{isbi_like}", "--out", str(out), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_data_must_be_isbi_or_cells_and_a_rerun_must_share_the_settings(isbi_like, tmp_path,
                                                                         capsys):
    for data, message in ((f"folder:{isbi_like}", "give --data isbi2012:PATH or --data cells"),
                          ("foo:", "give --data isbi2012:PATH or --data cells[:n=16,size=384]"),
                          (f"isbi2012:{tmp_path / 'nowhere'}", "does not exist")):
        with pytest.raises(SystemExit) as e:
            compare(["--data", data, "--out", str(tmp_path / "x")])
        assert e.value.code == 2 and message in capsys.readouterr().err
    out = tmp_path / "cmp"
    (out).mkdir()
    (out / "compare.json").write_text(json.dumps({"settings": {
        "data": f"isbi2012:{isbi_like}", "time": "10m", "iters": None, "preset": "cpu",
        "validations": 10, "steps": "calibration.json"}}))
    with pytest.raises(SystemExit):
        compare(["--data", f"isbi2012:{isbi_like}", "--out", str(out), "--time", "5m"])
    err = capsys.readouterr().err
    assert "holds a comparison with other settings: time '5m' (there: '10m')" in err


def test_timed_trainings_validate_ten_times_unless_told(isbi_like):
    """Every network's curve gets as many points, whatever its step costs: --validations 10
    is forwarded to each --time training unless --val-every or --validations is given."""
    from minunet.compare import build_parser, settings_of

    def forwarded(*extra):
        args = build_parser().parse_args(["--data", f"isbi2012:{isbi_like}", *extra])
        return settings_of(args).train_options

    assert forwarded() == {"validations": 10}
    assert forwarded("--validations", "4") == {"validations": 4}
    assert forwarded("--val-every", "50") == {"val_every": 50}
    assert forwarded("--iters", "5") == {}


def test_default_entries_separate_the_architecture_from_the_loss():
    entries = comparison.select_entries("")
    assert [e.name for e in entries] == ["unet", "unet-bn", "resunet", "unetpp", "unetpp-xent",
                                         "unet3p", "unet3p-xent", "mobile-unet", "eff-unet"]
    loss = {e.name: e.loss for e in entries}
    assert loss["unetpp"] == "bce_dice" and loss["unet3p"] == "hybrid"
    assert {loss[n] for n in loss if n not in ("unetpp", "unet3p")} == {"softmax_cross_entropy"}
    settings = comparison.Settings("isbi2012:/d", time="10m")
    cmd = comparison.train_command(settings.given(comparison.ENTRIES["unetpp-xent"], 2,
                                                  "OUT/unetpp-xent/seed2/run"))
    assert cmd[1:] == ["-m", "minunet.train", "--data", "isbi2012:/d", "--time", "10m",
                       "--preset", "cpu", "--seed", "2", "--arch", "unetpp", "--base", "4",
                       "--model", "loss=softmax_cross_entropy", "--keep-checkpoints", "--out",
                       "OUT/unetpp-xent/seed2/run"]
    unet = comparison.entry_cost(comparison.ENTRIES["unet"], settings)  # the CPU preset, base 8
    assert unet["size"] == 572 and unet["params"] == 485_682


def test_the_table_names_each_machine_and_which_entries_ran_there():
    from minunet.evaluation.comparison_table import markdown, summarize

    def result(seed, cpu):
        return {"status": "done", "seed": seed, "result": f"x/seed{seed}/result.json",
                "network": {"params": 1, "gflop": 1.0, "size": 512},
                "scores": {k: dict.fromkeys(comparison.SCORES, 0.5) for k in ("plain", "tta8")},
                "train": {"steps": 10, "wall_s": 600, "peak_rss_mb": 100,
                          "machine": cpu and {"cpu": cpu, "cores": 2, "simd": "avx2",
                                              "blas": "openblas Haswell"}}}
    rows = [summarize("a", [result(0, "CPU A"), result(1, "CPU B")], 2),
            summarize("b", [result(0, "CPU A"), result(1, None)], 2)]
    assert rows[0]["machines"] == "CPU A, 2 cores, avx2, openblas Haswell;CPU B, 2 cores, " \
                                  "avx2, openblas Haswell"
    md = markdown(rows)
    assert "The runs ran on 3 machines, whose steps in one budget differ: CPU A, 2 cores, " \
           "avx2, openblas Haswell (a, b); CPU B, 2 cores, avx2, openblas Haswell (a); not " \
           "recorded (b)." in md
    one = markdown([summarize("c", [result(0, "CPU A")], 1)])
    assert "Machine: CPU A, 2 cores, avx2, openblas Haswell." in one and "machines" not in one


def test_the_table_says_which_entries_are_apart_beyond_the_seeds_spread():
    from minunet.evaluation.comparison_table import apart, markdown, summarize

    def result(seed, v_rand, tta):
        scores = {"plain": dict.fromkeys(comparison.SCORES, 0.5),
                  "tta8": dict.fromkeys(comparison.SCORES, 0.5)}
        scores["plain"]["v_rand"], scores["tta8"]["v_rand"] = v_rand, tta
        return {"status": "done", "seed": seed, "result": f"x/seed{seed}/result.json",
                "network": {"params": 1, "gflop": 1.0, "size": 512}, "scores": scores,
                "train": {"steps": 10, "wall_s": 600, "peak_rss_mb": 100}}

    rows = [summarize("b", [result(0, 0.80, 0.85), result(1, 0.84, 0.86)], 3),
            summarize("a", [result(0, 0.90, 0.86), result(1, 0.92, 0.91)], 3),
            summarize("c", [result(0, 0.70, 0.80), result(1, 0.85, 0.84)], 3),
            summarize("d", [result(0, 0.10, 0.10)], 3)]  # one seed: no spread to set against
    # a's lowest 0.90 lies above b's highest 0.84 and c's 0.85; b and c overlap
    assert apart(rows, "v_rand") == ["a above b, c"]
    # with TTA a (0.86-0.91) overlaps b (0.85-0.86), c (0.80-0.84) lies below both
    assert apart(rows, "v_rand_tta8") == ["a above c", "b above c"]
    md = markdown(rows)
    assert "among entries with two or more seeds): V_rand: a above b, c. V_rand +TTA: a " \
           "above c; b above c." in md and "above d" not in md
    assert "Apart beyond" not in markdown(rows[:1] + rows[3:])  # fewer than two with spread


def test_band_interpolates_the_seeds_on_the_minutes_they_all_cover():
    curves = [(np.array([1.0, 3.0]), np.array([0.5, 0.7])),
              (np.array([0.5, 2.0, 4.0]), np.array([0.4, 0.6, 0.8]))]
    grid, mean, lo, hi = band(curves)
    assert grid[0] == 1.0 and grid[-1] == 3.0
    at2 = np.argmin(abs(grid - 2.0))
    assert np.interp(2.0, grid, mean) == pytest.approx((0.6 + 0.6) / 2, abs=1e-3)
    assert lo[0] == pytest.approx(0.4 + 0.2 / 1.5 * 0.5) and hi[0] == 0.5
    assert lo[at2] <= mean[at2] <= hi[at2]


def test_curves_come_from_the_held_out_curve_else_from_the_training_validations(tmp_path):
    run = tmp_path / "e/seed0/run"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("iteration,elapsed_s,v_rand,v_info\n"
                                     "5,2.0,0.6,0.9\n10,4.5,,\n15,7.0,0.8,0.95\n")
    step = {"calibration": {"step_s": 6.0}}
    cells = {"status": "done", "run": "e/seed0/run", "train": step}
    (minutes, v_rand), = curves_of([cells], tmp_path)  # row 10 has no validation
    assert minutes.tolist() == pytest.approx([0.5, 1.5]) and v_rand.tolist() == [0.6, 0.8]
    (minutes, _), = curves_of([{**cells, "train": {}}], tmp_path)  # no calibration: wall-clock
    assert minutes.tolist() == pytest.approx([2.0 / 60, 7.0 / 60])
    isbi = {**cells, "curve": {"rows": [{"iteration": 10, "elapsed_s": None, "v_rand": 0.7}]}}
    (minutes, v_rand), = curves_of([isbi], tmp_path)  # curve.csv's held-out V_rand first
    assert minutes.tolist() == [1.0] and v_rand.tolist() == [0.7]
    assert curves_of([cells]) == [] and curves_of([{**cells, "status": "failed"}], tmp_path) == []


CELLS = ["--data", "cells:n=2,size=128", "--nets", "unet,unet-bn", "--seeds", "0", "--iters",
         "2", "--val-every", "2", "--preset", "tiny", "--device", "cpu"]


@pytest.mark.slow
def test_cells_end_to_end_resumable_held_out_once(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare([*CELLS, "--out", str(out)]) == 0
    held = {p: p.stat().st_mtime_ns for p in (out / "heldout").rglob("*.*")}
    assert sorted(p.name for p in held) == ["0.png", "0.tif", "1.png", "1.tif", "2.png", "2.tif"]
    truth = [touching_cells(128, seed=(99, i)) for i in range(3)]  # the README's held-out set
    for i, c in enumerate(truth):
        assert np.array_equal(np.asarray(Image.open(out / f"heldout/images/{i}.png")), c.image)
        labels = tifffile.imread(out / f"heldout/labels/{i}.tif")
        assert labels.dtype == np.uint16 and np.array_equal(labels, c.instances)
    assert (out / "figure.png").stat().st_size > 0  # the validation V_rand of metrics.csv
    with open(out / "table.csv", newline="") as f:
        assert next(csv.reader(f)) == columns("cells")
    table = {r["entry"]: r for r in rows(out / "table.csv")}
    assert list(table) == ["unet", "unet-bn"] and table["unet-bn"]["gflop_size"] == "512"
    for row in table.values():
        result = json.loads((out / row["results"]).read_text())
        assert result["status"] == "done" and result["heldout"] == ["0", "1", "2"]
        assert "curve" not in result and not (out / result["run"] / "checkpoints").exists()
        for kind, suffix in (("plain", ""), ("tta8", "_tta8")):
            scores = result["scores"][kind]
            assert scores["predictions"].endswith("pred/instances" if kind == "plain" else
                                                  "pred_tta8/instances")
            assert scores["n_true"] == sum(int(c.instances.max()) for c in truth)
            by_evaluate = rows(out / scores["csv"])[-1]  # evaluate --instances' 'all' row
            assert by_evaluate["slice"] == "all"
            for s in ("f1", "seg", "ap"):
                assert float(row[f"{s}{suffix}_mean"]) == scores[s] == float(by_evaluate[s])
    md = (out / "table.md").read_text()
    assert "| entry | loss | parameters | GFLOP@512 | steps | peak MB | F1 | F1 +TTA | SEG | " \
           "SEG +TTA | AP | AP +TTA | seeds |" in md
    assert json.loads((out / "compare.json").read_text())["settings"]["data"] == \
        "cells:n=2,size=128"

    # half done: only the TTA scores of unet-bn are made again; the held-out set is not rewritten
    (out / "unet-bn/seed0/result.json").unlink()
    (out / "unet-bn/seed0/eval_tta8.csv").unlink()
    capsys.readouterr()
    assert compare([*CELLS, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "unet seed 0: done, skipped" in said and ": training" not in said
    assert "unet-bn seed 0: predicting the held-out images with --tta 8" in said
    assert "predicting the held-out images\n" not in said
    assert {p: p.stat().st_mtime_ns for p in (out / "heldout").rglob("*.*")} == held

    # a held-out set that is not the walk-through's is refused, in one line
    tifffile.imwrite(out / "heldout/labels/2.tif", np.zeros((128, 128), np.uint16))
    with pytest.raises(SystemExit) as e:
        compare([*CELLS, "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "is not the held-out set of touching_cells(128, seed=(99, i)), i = 0..2; remove it" \
        in err


@pytest.mark.parametrize("data, extra, message", [
    ("cells:n=1", [], "need n >= 2"),
    ("cells:m=3", [], "'m=3' not understood; give cells:n=16,size=384"),
    ("cells:size=32", [], "give size >= 64"),
    ("cells:seed=99", [], "seed 99 would train on the held-out images"),
    ("cells", ["--holdout", "1"], "--holdout is for isbi2012"),
    ("cells", ["--val", "20"], "validation count 20 must lie in [0, 15] for 16 images"),
])
def test_cells_usage_errors_are_one_line(tmp_path, capsys, data, extra, message):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        compare(["--data", data, "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cells_alone_is_the_walk_through_into_runs_compare_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert compare(["--data", "cells", "--nets", "unet", "--table-only"]) == 0
    out = tmp_path / "runs" / "compare_cells"
    saved = json.loads((out / "compare.json").read_text())
    assert saved["settings"] == {"data": "cells:n=16,size=384", "time": "10m", "iters": None,
                                 "preset": "cpu", "validations": 10,
                                 "steps": "calibration.json"}
    assert saved["heldout"]["images"].startswith("touching_cells(384, seed=(99, i))")
    assert not (out / "heldout").exists()  # --table-only runs nothing
    assert rows(out / "table.csv")[0]["f1_mean"] == ""  # nothing run yet
    with pytest.raises(SystemExit):  # the same folder with other settings is refused
        compare(["--data", "cells:size=256", "--nets", "unet", "--table-only"])
    assert "data 'cells:n=16,size=256' (there: 'cells:n=16,size=384')" in capsys.readouterr().err
