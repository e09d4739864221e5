"""The comparison's calibrated steps (minunet/training/calibration.py): every entry's step time
measured side by side, each run trained the steps its budget buys (--iters, --val-every, the
poly schedule), the record in OUT/calibration.json, the figure's minutes from it; a rerun that
asks for an entry not measured, or another budget, refused in one line."""

import csv
import json

import numpy as np
import pytest

import minunet.training.calibration as calibration
from minunet.compare import main as compare
from minunet.evaluation.comparison_table import curves_of


def test_the_steps_a_budget_buys():
    assert calibration.steps_for(600, 0.123, 10) == {"iters": 4878, "val_every": 488}
    assert calibration.steps_for(600, 0.1, 10) == {"iters": 6000, "val_every": 600}
    assert calibration.steps_for(60, 6.0, 4) == {"iters": 10, "val_every": 3}  # last at 10
    assert calibration.steps_for(5, 20.0, 10) == {"iters": 1, "val_every": 1}  # at least one


def test_calibrate_only_measures_the_entries_in_turns_and_trains_nothing(isbi_like, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.setattr(calibration, "ROUNDS", 3)
    monkeypatch.setattr(calibration, "STEPS", 1)
    out = tmp_path / "cmp"
    base = ["--data", f"isbi2012:{isbi_like}", "--out", str(out), "--seeds", "0", "--time",
            "1m", "--preset", "tiny", "--device", "cpu"]
    assert compare([*base, "--nets", "unet,unetpp", "--calibrate-only"]) == 0
    record = json.loads((out / "calibration.json").read_text())
    assert record["seconds"] == 60 and record["validations"] == 10
    assert record["rounds"] == 3 and record["steps_per_round"] == 1
    assert record["machine"]["cores"] >= 1 and "--calibrate-only" in record["command"]
    assert list(record["entries"]) == ["unet", "unetpp"]
    for entry in record["entries"].values():
        rounds = entry["step_s_rounds"]
        assert len(rounds) == 3 and min(rounds) > 0
        assert entry["step_s"] == pytest.approx(float(np.median(rounds)), abs=1e-5)
        assert entry == {**entry, **calibration.steps_for(60, entry["step_s"], 10)}
    assert not (out / "unet").exists() and not (out / "unetpp").exists()  # nothing trained
    # an entry that was not measured with the others is refused, and so is another budget
    with pytest.raises(SystemExit) as e:
        compare([*base, "--nets", "unet-bn"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "has no steps for unet-bn (its step times were measured side by side for unet, " \
           "unetpp)" in err
    record["seconds"] = 120.0
    (out / "calibration.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        compare([*base, "--nets", "unet"])
    assert "was measured for a budget of 120 s, not 60 s" in capsys.readouterr().err


@pytest.mark.slow
def test_a_calibrated_run_trains_its_steps_and_its_curve_is_in_calibrated_minutes(
        isbi_like, tmp_path, capsys, monkeypatch):
    # a measurement the test chooses: 6 s a step (median of the rounds) buys 10 steps in 1m
    measured = {}

    def fake_measure(configs, rounds, steps, say):
        measured.update(configs)
        return {name: [7.0, 6.0, 5.0] for name in configs}

    monkeypatch.setattr(calibration, "measure", fake_measure)
    out = tmp_path / "cmp"
    assert compare(["--data", f"isbi2012:{isbi_like}", "--out", str(out), "--seeds", "0",
                    "--time", "1m", "--validations", "2", "--preset", "tiny", "--device",
                    "cpu", "--nets", "unet"]) == 0
    assert (measured["unet"].arch, measured["unet"].time) == ("unet", "1m")  # as trained
    config = json.loads((out / "unet" / "seed0" / "run" / "config.json").read_text())
    train = config["train"]
    assert (train["iters"], train["val_every"], train["schedule"], train["time"]) == \
        (10, 5, "poly", "")
    assert "budget" not in config or config["budget"] is None  # no --time measurement
    result = json.loads((out / "unet" / "seed0" / "result.json").read_text())
    assert result["train"]["steps"] == 10
    assert result["train"]["calibration"] == {"step_s": 6.0, "iters": 10,
                                              "from": "calibration.json"}
    assert [c["iteration"] for c in result["curve"]["rows"]] == [5, 10]
    (minutes, _), = curves_of([result])
    assert minutes.tolist() == pytest.approx([0.5, 1.0])  # iteration * 6 s
    with open(out / "table.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["steps_mean"]) == 10
    table = (out / "table.md").read_text()
    assert "1m of training, steps measured side by side" in table
    assert "Steps measured on: " in table and "the budget over the network's step time" in table
