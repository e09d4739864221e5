"""The training CLI: run folder, exact resume, buffers and architecture, faults (NaN, Ctrl-C),
presets, and bad input that must end in one clear error with nothing left on disk."""

import csv
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from minunet.models import unet as model_module
from minunet.models.unet import UNet
from minunet.train import (
    PRESETS,
    TrainConfig,
    Trainer,
    build_parser,
    field_help,
    main,
    resolve_config,
)
from minunet.training.checkpoint import load_checkpoint, save_checkpoint

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
    assert list(rows[0]) == ["iteration", "elapsed_s", "train_loss_weighted", "val_xent",
                             "pixel_accuracy", "pixel_error", "rand_error", "v_rand", "v_info"]
    assert float(rows[0]["elapsed_s"]) > 0
    assert all(0 <= float(rows[0][k]) <= 1 for k in ("pixel_error", "v_rand", "v_info"))
    assert [r["iteration"] for r in rows] == ["2"]
    assert 0 <= float(rows[0]["pixel_accuracy"]) <= 1 and float(rows[0]["val_xent"]) > 0
    assert float(rows[0]["train_loss_weighted"]) > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["base"] == 2 and cfg["optimizer"]["momentum"] == 0.99
    assert cfg["model"]["arch"] == "unet" and cfg["model"]["ops"] == "fast"
    assert load_checkpoint(out / "last.npz").arch == "unet"
    assert not list(out.glob(".*.tmp"))  # nothing half-written


def test_best_checkpoint_has_the_lowest_validation_pixel_error(tmp_path):
    """best.npz follows the ISBI pixel error of the validation images, not val_xent (scripted
    validations: the lowest pixel error comes at iteration 4, the lowest val_xent at 8)."""
    trainer = Trainer(_cfg(tmp_path, "run", iters=8), quiet=True)
    scripted = iter([(0.30, 0.9), (0.10, 0.8), (0.20, 0.7), (0.10, 0.6)])
    trainer.validate = lambda: dict(zip(("pixel_error", "val_xent"), next(scripted),
                                        strict=True))
    assert trainer.run() == 0
    assert load_checkpoint(tmp_path / "run" / "best.npz").iteration == 4
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert [r["pixel_error"] for r in rows] == ["0.3", "0.1", "0.2", "0.1"]


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
    assert a.iteration == b.iteration == 4
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    for k in a.velocity:
        np.testing.assert_array_equal(a.velocity[k], b.velocity[k], err_msg=k)
    rows = _rows(tmp_path / "split" / "metrics.csv")
    assert [r["iteration"] for r in rows] == ["2", "4"]


class CountingUNet(UNet):
    """A U-Net with one buffer, as a model with normalisation layers would have."""

    arch = "counting_unet"

    def __init__(self, config=None, seed=0):
        super().__init__(config, seed)
        self.buffers["steps.count"] = np.zeros(2, config.dtype)


def test_resume_carries_the_architecture_and_buffers(tmp_path, monkeypatch):
    monkeypatch.setitem(model_module.ARCHITECTURES, "counting_unet", CountingUNet)
    assert Trainer(_cfg(tmp_path, "a", iters=1, val_every=1), quiet=True).run() == 0
    ckpt = load_checkpoint(tmp_path / "a" / "last.npz")
    assert ckpt.buffers == {}  # the U-Net has none
    ckpt.config["model"]["arch"] = "counting_unet"
    save_checkpoint(tmp_path / "b" / "last.npz", ckpt.params, ckpt.velocity, ckpt.iteration,
                    ckpt.config, ckpt.rng, buffers={"steps.count": np.array([3.0, 4.0])},
                    arch="counting_unet")
    t = Trainer(_cfg(tmp_path, "b", iters=2, val_every=1),
                resume=str(tmp_path / "b" / "last.npz"), quiet=True)
    assert t.model.arch == "counting_unet"
    np.testing.assert_array_equal(t.model.buffers["steps.count"], [3, 4])
    assert t.run() == 0
    again = load_checkpoint(tmp_path / "b" / "last.npz")
    assert again.arch == "counting_unet" and again.iteration == 2
    np.testing.assert_array_equal(again.buffers["steps.count"], [3, 4])
    with np.load(tmp_path / "b" / "last.npz") as z:
        assert "buffer.steps.count" in z.files


def test_divergence_stops_with_a_clear_message(tmp_path, capsys):
    cfg = _cfg(tmp_path, "nan", iters=40, lr=1e12, val_every=20)
    assert Trainer(cfg, quiet=True).run() == 1
    err = capsys.readouterr().err
    assert "diverged at iteration" in err and "lower --lr (now 1000000000000.0)" in err


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    assert Trainer(_cfg(tmp_path, "a", iters=1, val_every=1), quiet=True).run() == 0
    c = load_checkpoint(tmp_path / "a" / "last.npz")
    c.config["model"]["base"] = 4
    save_checkpoint(tmp_path / "b.npz", c.params, c.velocity, c.iteration, c.config, c.rng)
    with pytest.raises(ValueError, match="shape mismatches"):
        Trainer(_cfg(tmp_path, "b", iters=2), resume=str(tmp_path / "b.npz"), quiet=True)
    assert not (tmp_path / "b").exists()  # refused before the run folder was made
    c.config["model"]["arch"] = "resnet"
    save_checkpoint(tmp_path / "c.npz", c.params, c.velocity, c.iteration, c.config, c.rng,
                    arch="resnet")
    with pytest.raises(ValueError, match="unknown architecture 'resnet'; known: .*unet"):
        Trainer(_cfg(tmp_path, "c", iters=2), resume=str(tmp_path / "c.npz"), quiet=True)


def test_presets_and_bad_options():
    cfg = resolve_config({"device": "cpu"})
    assert cfg.preset == "cpu" and cfg.base == PRESETS["cpu"]["base"]
    assert resolve_config({"device": "cpu", "preset": "paper"}).base == 64
    assert resolve_config({"device": "cpu", "base": 8}).base == 8
    assert resolve_config({"device": "cpu", "ops": "plain"}).ops == "plain"
    with pytest.raises(ValueError, match="nearest valid sizes are 492 or 508"):
        resolve_config({"device": "cpu", "tile": 500})


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "-1", "--lr must be a number > 0, got -1.0"),
    ("--lr", "nan", "--lr must be a number > 0"),
    ("--momentum", "-0.5", r"--momentum must be in \[0, 1\)"),
    ("--momentum", "1", r"--momentum must be in \[0, 1\)"),
    ("--dropout", "1", r"--dropout must be in \[0, 1\)"),
    ("--dropout", "-0.1", r"--dropout must be in \[0, 1\)"),
    ("--weight-decay", "-1", "--weight-decay must be a number >= 0"),
    ("--iters", "0", "--iters must be an integer >= 1"),
    ("--batch", "0", "--batch must be an integer >= 1"),
    ("--val-every", "0", "--val-every must be an integer >= 1"),
    ("--warmup", "-1", "--warmup must be an integer >= 0"),
    ("--seed", "-1", "--seed must be an integer >= 0"),
    ("--prefetch", "-1", "--prefetch must be an integer >= 0"),
    ("--tile", "500", "--tile: .*nearest valid sizes are 492 or 508"),
    ("--val", "a,b", "--val 'a,b' not understood"),
])
def test_invalid_options_are_one_error_and_create_nothing(tmp_path, capsys, option, value,
                                                          message):
    out = tmp_path / "never"
    assert main(["--device", "cpu", "--preset", "tiny", option, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not out.exists()


def test_every_option_has_help_from_the_config_and_the_presets():
    parser = build_parser()
    assert not [a.dest for a in parser._actions if not (a.help or "").strip()]
    helps = field_help(TrainConfig)  # the one place: TrainConfig's field comments
    assert set(helps) == {f.name for f in fields(TrainConfig)} and all(helps.values())
    assert helps["prefetch"].endswith("it competes for the cores)")  # continued comment lines
    text = " ".join(parser.format_help().split())  # format_help raises on a stray %
    assert helps["lr"] in text
    for name, preset in PRESETS.items():  # the --preset help is generated: it cannot go stale
        assert f"{name}: base {preset['base']}, depth {preset['depth']}, tile {preset['tile']}" \
            in text, name


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
    assert load_checkpoint(out / "last.npz").iteration >= 1


def test_bad_data_or_checkpoint_is_a_clear_error_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--device", "cpu", "--data", "isbi2012:/no/such/path", "--out", str(out)]) == 2
    assert "error: ISBI 2012 path '/no/such/path' does not exist" in capsys.readouterr().err
    assert not out.exists()
    assert main(["--device", "cpu", "--resume", str(tmp_path / "missing.npz")]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_an_image_that_is_no_image_is_one_error_line(tmp_path, capsys):
    data = tmp_path / "D"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((200, 200), np.uint8)).save(data / "images" / f"{i:02d}.png")
        Image.fromarray(np.full((200, 200), 255, np.uint8)).save(data / "masks" / f"{i:02d}.png")
    (data / "images" / "00.png").write_text("not a picture")
    out = tmp_path / "never"
    assert main(["--device", "cpu", "--preset", "tiny", "--data", f"folder:{data}",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(data / "images" / "00.png") in err and "not a readable image" in err
    assert not out.exists()


def test_a_file_that_is_no_checkpoint_never_suggests_unpickling(tmp_path, capsys):
    notes = tmp_path / "notes.npz"
    notes.write_text("hello")
    out = tmp_path / "never"
    assert main(["--device", "cpu", "--resume", str(notes), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not a minunet checkpoint" in err and ".npz" in err
    assert "pickle" not in err.lower()
    assert not out.exists()


def test_isbi_slices_held_out_by_default_are_named(tmp_path, capsys):
    """Fewer than 30 slices: the default holds out the last sixth, validates on the slice
    before, and says which."""
    for sub in ("images", "labels"):
        (tmp_path / "isbi" / sub).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.zeros((200, 200), np.uint8)).save(
            tmp_path / "isbi" / "images" / f"{i:02d}.png")
        label = np.full((200, 200), 255, np.uint8)
        label[:, 90:95] = 0
        Image.fromarray(label).save(tmp_path / "isbi" / "labels" / f"{i:02d}.png")
    t = Trainer(TrainConfig(**{**TINY, "data": f"isbi2012:{tmp_path / 'isbi'}",
                               "out": str(tmp_path / "run"), "iters": 1}))
    t.sampler.close()
    assert [s.name for s in t.data.val] == ["04"] and len(t.data.train) == 4
    out = capsys.readouterr().out
    assert "1 for validation (choosing best.npz): 04 (choose others with --val)" in out
    assert "never trained on nor validated (score them with predict and evaluate): 05 " \
           "(choose others with --holdout)" in out
