"""The training CLI: run folder, exact resume, faults (NaN, Ctrl-C), presets."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minunet.checkpoint import load_checkpoint, save_checkpoint
from minunet.train import PRESETS, TrainConfig, Trainer, main, resolve_config

TINY = dict(base=2, depth=4, tile=188, lr=0.01, val_every=2, prefetch=0, device="cpu",
            data="synthetic:n=3,size=200")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _cfg(tmp_path, name, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def test_run_folder_contents(tmp_path):
    assert Trainer(_cfg(tmp_path, "run", iters=2), quiet=True).run() == 0
    out = tmp_path / "run"
    for f in ("config.json", "metrics.csv", "loss.png", "val_predictions.png", "last.npz",
              "best.npz"):
        assert (out / f).is_file(), f
    rows = _rows(out / "metrics.csv")
    assert [r["iteration"] for r in rows] == ["2"]
    assert 0 <= float(rows[0]["pixel_accuracy"]) <= 1 and float(rows[0]["val_loss"]) > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["base"] == 2 and cfg["optimizer"]["momentum"] == 0.99
    assert not list(out.glob("*.tmp"))  # nothing half-written


def test_resume_is_exact(tmp_path):
    """2N iterations straight == N, then --resume, then N more (identical weights, CPU)."""
    straight = _cfg(tmp_path, "straight", iters=4)
    assert Trainer(straight, quiet=True).run() == 0
    first = _cfg(tmp_path, "split", iters=2)
    assert Trainer(first, quiet=True).run() == 0
    again = _cfg(tmp_path, "split", iters=4)
    assert Trainer(again, resume=str(tmp_path / "split" / "last.npz"), quiet=True).run() == 0
    a = load_checkpoint(tmp_path / "straight" / "last.npz")
    b = load_checkpoint(tmp_path / "split" / "last.npz")
    assert a[2] == b[2] == 4
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)
    rows = _rows(tmp_path / "split" / "metrics.csv")
    assert [r["iteration"] for r in rows] == ["2", "4"]


def test_divergence_stops_with_a_clear_message(tmp_path, capsys):
    cfg = _cfg(tmp_path, "nan", iters=40, lr=1e12, val_every=20)
    assert Trainer(cfg, quiet=True).run() == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "Lower --lr" in err


def test_checkpoint_is_atomic_and_pickle_free(tmp_path):
    p = tmp_path / "c.npz"
    save_checkpoint(p, {"a.weight": np.ones(3)}, {"velocity.a.weight": np.zeros(3)}, 7,
                    {"x": 1}, {"seed": 0})
    params, vel, it, cfg, rng = load_checkpoint(p)
    assert it == 7 and cfg == {"x": 1} and rng == {"seed": 0}
    assert list(params) == ["a.weight"] and list(vel) == ["velocity.a.weight"]
    with np.load(p, allow_pickle=False) as z:
        assert set(z.files) == {"a.weight", "velocity.a.weight", "config", "iteration", "rng"}
    assert os.listdir(tmp_path) == ["c.npz"]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable minunet checkpoint"):
        load_checkpoint(tmp_path / "bad.npz")


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    assert Trainer(_cfg(tmp_path, "a", iters=1, val_every=1), quiet=True).run() == 0
    params, vel, it, cfg, rng = load_checkpoint(tmp_path / "a" / "last.npz")
    cfg["model"]["base"] = 4
    save_checkpoint(tmp_path / "b.npz", params, vel, it, cfg, rng)
    with pytest.raises(ValueError, match="shape mismatches"):
        Trainer(_cfg(tmp_path, "b", iters=2), resume=str(tmp_path / "b.npz"), quiet=True)


def test_presets_and_bad_options():
    cfg = resolve_config({"device": "cpu"})
    assert cfg.preset == "cpu" and cfg.base == PRESETS["cpu"]["base"]
    assert resolve_config({"device": "cpu", "preset": "paper"}).base == 64
    assert resolve_config({"device": "cpu", "base": 8}).base == 8
    with pytest.raises(SystemExit, match="nearest valid sizes are 492 or 508"):
        resolve_config({"device": "cpu", "tile": 500})


def test_describe_cli(capsys):
    assert main(["--describe", "--device", "cpu", "--preset", "paper"]) == 0
    assert "31,030,658" in capsys.readouterr().out


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "int"
    proc = subprocess.Popen(
        [sys.executable, "-m", "minunet.train", "--device", "cpu", "--preset", "tiny",
         "--iters", "100000", "--val-every", "100000", "--prefetch", "0", "--lr", "0.001",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # some iterations
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted at iteration" in text
    _, _, it, _, _ = load_checkpoint(out / "last.npz")
    assert it >= 1


def test_bad_data_or_checkpoint_is_a_clear_error_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--device", "cpu", "--data", "isbi2012:/no/such/path", "--out", str(out)]) == 2
    assert "error: ISBI 2012 path '/no/such/path' does not exist" in capsys.readouterr().err
    assert not out.exists()
    assert main(["--device", "cpu", "--resume", str(tmp_path / "missing.npz")]) == 2
    assert "checkpoint" in capsys.readouterr().err
