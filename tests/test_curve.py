"""`python -m minunet.curve`: the kept checkpoints of a run scored on its held-out slices, the
same numbers as `predict` + `evaluate` give, and a figure against minutes and iterations."""

import csv

import pytest

from minunet.curve import main as curve
from minunet.evaluate import main as evaluate
from minunet.predict import main as predict
from minunet.train import main as train


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_curve_scores_kept_checkpoints_like_predict_and_evaluate(isbi_like, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(["--data", f"isbi2012:{isbi_like}", "--preset", "tiny", "--iters", "4",
                  "--val-every", "2", "--keep-checkpoints", "--device", "cpu",
                  "--out", str(run)]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002.npz",
                                                                        "000004.npz"]
    metrics = rows(run / "metrics.csv")
    assert [float(r["elapsed_s"]) > 0 for r in metrics] == [True, True]
    assert curve([str(run)]) == 0
    assert (run / "curve.png").stat().st_size > 0
    scored = rows(run / "curve.csv")
    assert [r["iteration"] for r in scored] == ["2", "4"]
    assert [r["elapsed_s"] for r in scored] == [r["elapsed_s"] for r in metrics]

    # the held-out slice of 6 (slice 05) through the command-line tools gives the same scores
    pred = tmp_path / "pred"
    assert predict(["--checkpoint", str(run / "checkpoints" / "000004.npz"),
                    str(isbi_like / "images" / "05.png"), "--out", str(pred)]) == 0
    assert evaluate([str(pred / "prob" / "05.png"), str(isbi_like / "labels" / "05.png"),
                     "--csv", str(tmp_path / "eval.csv")]) == 0
    by_hand = rows(tmp_path / "eval.csv")[-1]
    for key in ("pixel_error", "rand_error", "v_rand", "v_info"):  # the CSV keeps 6 places
        assert float(scored[-1][key]) == pytest.approx(float(by_hand[key]), abs=5e-7), key


def test_curve_of_a_run_without_kept_checkpoints_or_holdout_says_what_to_do(tmp_path, capsys):
    run = tmp_path / "plain"
    assert train(["--preset", "tiny", "--iters", "2", "--val-every", "2", "--device", "cpu",
                  "--out", str(run)]) == 0
    capsys.readouterr()
    assert curve([str(run)]) == 2
    assert "train with --keep-checkpoints" in capsys.readouterr().err
    kept = tmp_path / "kept"
    assert train(["--preset", "tiny", "--iters", "2", "--val-every", "2", "--device", "cpu",
                  "--keep-checkpoints", "--out", str(kept)]) == 0
    capsys.readouterr()
    assert curve([str(kept)]) == 2  # synthetic data holds nothing out unless told
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train with --holdout" in err and err.count("\n") == 1
    assert curve([str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_runs_of_the_same_name_get_their_parent_in_the_legend(tmp_path, isbi_like, monkeypatch):
    import minunet.curve as curve_module

    for seed in ("seed0", "seed1"):
        assert train(["--data", f"isbi2012:{isbi_like}", "--preset", "tiny", "--iters", "2",
                      "--val-every", "2", "--keep-checkpoints", "--device", "cpu", "--seed",
                      seed[-1], "--out", str(tmp_path / seed / "run")]) == 0
    drawn = {}
    monkeypatch.setattr(curve_module, "plot_curves",
                        lambda curves, path, title="": drawn.update(curves) or path)
    assert curve([str(tmp_path / "seed0" / "run"), str(tmp_path / "seed1" / "run"), "--plot",
                  str(tmp_path / "both.png")]) == 0
    assert sorted(drawn) == ["seed0/run", "seed1/run"]
