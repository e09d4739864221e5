"""Nothing lost, nothing silently wrong (issue 22): each finding of a careful user's session,
reproduced and shown fixed. Training that diverges stops with its last finite checkpoints; a run
folder is never overwritten; a resumed run is the same run (same folder, same files); ranges
and lists are checked; flags that would be ignored are refused; paths that cannot be written
are one line; and the smaller points."""

import json
import os
import shutil
import signal
import stat

import numpy as np
import pytest
import tifffile
from PIL import Image

from minunet import export as export_module
from minunet import instances as instances_module
from minunet.data.loaders import DataError, as_holdout, as_index_list, load_folder
from minunet.files import check_writable
from minunet.train import TrainConfig, Trainer, main, parse_duration
from minunet.training.checkpoint import load_checkpoint, save_checkpoint

TINY = dict(base=2, depth=4, tile=188, lr=0.01, val_every=4, prefetch=0, device="cpu",
            data="synthetic:n=3,size=200")
TINY_ARGS = ["--base", "2", "--tile", "188", "--val-every", "2", "--prefetch", "0",
             "--device", "cpu", "--data", "synthetic:n=3,size=200", "--iters", "4"]


def _cfg(tmp_path, name, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _all_finite(path) -> bool:
    c = load_checkpoint(path)  # refuses a non-finite array itself
    return all(np.isfinite(a).all() for a in (*c.params.values(), *c.velocity.values()))


# --- 1. divergence is caught, even when the loss stays finite -------------------------------


def test_divergence_behind_a_finite_loss_stops_and_keeps_the_last_finite_checkpoints(
        tmp_path, capsys):
    """--lr 10 made every weight NaN while the logged losses stayed finite (ReLU turns NaN
    into 0), and the run exited 0. Now the gradient norm catches it: exit 1, one message with
    the iteration and the cause, and last.npz / best.npz are those of the last validation."""
    out = tmp_path / "run"
    code = main(["--preset", "tiny", "--lr", "10", "--val-every", "2", "--device", "cpu",
                 "--out", str(out)])
    err = _one_error_line(capsys)
    assert code == 1, err
    stopped = int(err.split("diverged at iteration ")[1].split(":")[0])
    assert stopped in (4, 5) and "lower --lr (now 10.0)" in err  # by the gradient norm, or
    # by the validation's prediction where the weights grew too large first
    saved = load_checkpoint(out / "last.npz").iteration
    assert saved < stopped and f"(last.npz: iteration {saved})" in err
    assert _all_finite(out / "last.npz") and _all_finite(out / "best.npz")


def test_a_diverging_step_is_named_by_its_iteration(tmp_path, capsys):
    t = Trainer(_cfg(tmp_path, "run", iters=8), quiet=True)
    real = t.step

    def poisoned():
        loss, norm = real()
        return (loss, np.float32(np.nan)) if t.it == 5 else (loss, norm)  # iteration 6

    t.step = poisoned
    assert t.run() == 1
    err = capsys.readouterr().err
    assert "diverged at iteration 6: the loss was" in err and "gradient norm nan" in err
    assert load_checkpoint(tmp_path / "run" / "last.npz").iteration == 4


def test_checkpoints_refuse_non_finite_and_non_float_arrays(tmp_path):
    good = {"w": np.ones(3, np.float32)}
    for bad, match in ((np.array([1.0, np.nan], np.float32), "1 NaN or infinite"),
                       (np.array([1, 2]), "is int64"), (np.array(["a"]), "is <U1")):
        with pytest.raises(ValueError, match=match):
            save_checkpoint(tmp_path / "c.npz", {"w": bad}, {}, 0, {}, {})
        assert not (tmp_path / "c.npz").exists()
        # a checkpoint made by hand with such an array is refused when loaded, so predict and
        # export never run a model with NaN or integer weights
        np.savez(tmp_path / "d.npz", w=bad, config=np.array(json.dumps({})),
                 iteration=np.array("0"), rng=np.array("{}"))
        with pytest.raises(ValueError, match=match):
            load_checkpoint(tmp_path / "d.npz")
    save_checkpoint(tmp_path / "c.npz", good, {}, 0, {}, {})
    assert load_checkpoint(tmp_path / "c.npz").params["w"].dtype == np.float32


def test_nan_pixels_are_refused_when_the_data_load(tmp_path):
    """Float images with NaN, normalised by percentiles (which the old error advised), trained
    to all-NaN weights. Now they are refused at loading, with or without --normalize."""
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(3):
        img = np.random.default_rng(i).random((40, 40)).astype(np.float32)
        img[3, 4] = np.nan
        tifffile.imwrite(tmp_path / "images" / f"{i}.tif", img)
        Image.fromarray((np.eye(40) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    for normalize in ("auto", "percentile"):
        with pytest.raises(DataError, match="1 of 1600 pixels are NaN or infinite"):
            load_folder(tmp_path, normalize=normalize)


# --- 2. a run folder is never overwritten ----------------------------------------------------


def test_out_of_an_existing_run_is_refused_and_overwrite_removes_the_old_files(tmp_path, capsys):
    out = tmp_path / "run"
    args = [*TINY_ARGS, "--out", str(out), "--keep-checkpoints"]
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(args[:-1]) == 2  # the same --out again: refused, nothing touched
    err = _one_error_line(capsys)
    assert "holds a run already" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000002.npz",
                                                                       "000004.npz"]
    # --overwrite replaces it; the old run's kept checkpoints go (curve would mix them in)
    assert main([*args[:-1], "--overwrite", "--iters", "2"]) == 0
    assert not (out / "checkpoints").exists()
    assert load_checkpoint(out / "last.npz").iteration == 2
    # a folder of other files is never a run to replace
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    assert main([*TINY_ARGS, "--out", str(other), "--overwrite"]) == 2
    assert "holds no minunet run" in _one_error_line(capsys)
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]


@pytest.mark.slow  # 5-12 s on a 2-core CPU
def test_the_default_run_folder_never_reuses_a_name(tmp_path, monkeypatch):
    import time

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261206-120000")  # the same second
    first = Trainer._new_run_path()
    first.mkdir(parents=True)
    second = Trainer._new_run_path()
    assert second != first and second.name.startswith(first.name)


# --- 3. a resumed run is the same run ----------------------------------------------------


def _files(run):
    """What must agree between a straight and a resumed run: the arrays and the settled
    metadata of last.npz and best.npz, and metrics.csv without the time column."""
    out = {}
    for name in ("last.npz", "best.npz"):
        c = load_checkpoint(run / name)
        rng = {k: v for k, v in c.rng.items() if k != "elapsed_s"}
        train = {k: v for k, v in c.config["train"].items() if k != "out"}
        out[name] = (c.iteration, rng, train,
                     {k: v.tobytes() for k, v in {**c.params, **c.velocity, **c.log}.items()})
    rows = (run / "metrics.csv").read_text().splitlines()
    out["metrics.csv"] = [",".join(v for i, v in enumerate(r.split(",")) if i != 1)
                          for r in rows]
    return out


def _interrupt_at(trainer, iterations):
    """Send SIGINT (Ctrl-C) while the step that ends at one of `iterations` runs."""
    real = trainer.step

    def step():
        if trainer.it + 1 in iterations:
            os.kill(os.getpid(), signal.SIGINT)
        return real()

    trainer.step = step


def test_a_run_interrupted_at_several_points_and_resumed_equals_the_straight_run(tmp_path):
    """Ctrl-C mid-interval (3), right at a validation (8) and after it (9); each time resumed
    as the command line does (`--resume RUN/last.npz` alone). Every file agrees with the
    straight run's: the weights, velocities and losses in last.npz and best.npz, and every
    row of metrics.csv (time aside) including the first after each resume."""
    assert Trainer(_cfg(tmp_path, "straight", iters=12), quiet=True).run() == 0
    run = tmp_path / "split"
    t = Trainer(_cfg(tmp_path, "split", iters=12), quiet=True)
    _interrupt_at(t, {3})
    assert t.run() == 130
    for stop in (8, 9, None):
        t = Trainer(TrainConfig(**TINY), resume=str(run / "last.npz"), quiet=True, given=set())
        if stop:
            _interrupt_at(t, {stop})
            assert t.run() == 130 and load_checkpoint(run / "last.npz").iteration == stop
        else:
            assert t.run() == 0
    straight, split = _files(tmp_path / "straight"), _files(run)
    assert straight["metrics.csv"] == split["metrics.csv"]
    for name in ("last.npz", "best.npz"):
        assert straight[name][:3] == split[name][:3], name
        assert straight[name][3].keys() == split[name][3].keys()
        for k, v in straight[name][3].items():
            assert v == split[name][3][k], (name, k)


def test_a_resumed_run_knows_its_best_score(tmp_path):
    """The resumed run replaced best.npz of iteration 4 (pixel error 0.10) by iteration 12's
    (0.20), not knowing the best so far. Scripted validations, interrupted after 8."""
    scores = {4: 0.10, 8: 0.30, 12: 0.20}

    def scripted(t):
        t.validate = lambda: {"pixel_error": scores[t.it], "val_xent": 1.0}
        return t

    t = scripted(Trainer(_cfg(tmp_path, "run", iters=12), quiet=True))
    _interrupt_at(t, {9})
    assert t.run() == 130
    t = scripted(Trainer(TrainConfig(**TINY), resume=str(tmp_path / "run" / "last.npz"),
                         quiet=True, given=set()))
    assert t.run() == 0
    assert load_checkpoint(tmp_path / "run" / "best.npz").iteration == 4


# --- 4. ranges and lists -------------------------------------------------------------


@pytest.mark.parametrize("flag, value, match", [
    ("--holdout", "29-25", "runs backwards; write it 25-29"),
    ("--val", "23,23", "more than once"),
    ("--holdout", "25-27,26", "more than once"),
    ("--val", "1,", "not understood"),
    ("--holdout", ",", "not understood"),
])
def test_reversed_repeated_or_empty_selections_are_errors(tmp_path, capsys, flag, value,
                                                          match):
    assert main([*TINY_ARGS, flag, value, "--out", str(tmp_path / "run")]) == 2
    assert match in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_ranges_still_read():
    assert as_holdout("25-29") == [25, 26, 27, 28, 29] and as_index_list("23-24") == [23, 24]
    assert as_holdout("none") == [] and as_index_list("") is None


# --- 6, 7. a resume writes into its own folder, and refuses flags it would ignore ------


def test_a_copied_run_resumes_in_the_copy_and_leaves_the_original_alone(tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY_ARGS, "--out", "orig"]) == 0  # a relative --out, recorded as such
    shutil.copytree("orig", "copy")
    before = {p.name: p.read_bytes() for p in (tmp_path / "orig").iterdir()}
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["--resume", str(tmp_path / "copy" / "last.npz"), "--iters", "6"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "orig").iterdir()} == before
    assert list(work.iterdir()) == []  # no new folder under the current directory
    assert load_checkpoint(tmp_path / "copy" / "last.npz").iteration == 6
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["train"]["out"] == str(tmp_path / "copy")
    assert "--iters 6 applies from here (the run had 4)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--base", "4"], "--base 4 (the run's: 2)"),
    (["--data", "synthetic:n=4,size=200"], "--data synthetic:n=4,size=200"),
    (["--depth", "3", "--tile", "140"], "--depth 3"),
    (["--time", "1m"], "--time sets the iterations of a new run"),
    (["--out", "elsewhere"], "continues the run in its own folder"),
    (["--overwrite"], "give one"),
])
def test_resume_refuses_flags_that_change_the_run(tmp_path, capsys, extra, match):
    run = tmp_path / "run"
    assert main([*TINY_ARGS, "--out", str(run)]) == 0
    capsys.readouterr()
    before = (run / "last.npz").read_bytes()
    assert main(["--resume", str(run / "last.npz"), *extra]) == 2
    assert match in _one_error_line(capsys)
    assert (run / "last.npz").read_bytes() == before
    # the same value as the run's is no change
    assert main(["--resume", str(run / "last.npz"), "--base", "2", "--iters", "6"]) == 0


def test_time_with_iters_is_an_error_and_time_has_a_ceiling(tmp_path, capsys):
    assert main([*TINY_ARGS, "--time", "1m", "--out", str(tmp_path / "a")]) == 2
    assert "--time and --iters both set the length" in _one_error_line(capsys)
    with pytest.raises(ValueError, match="the most is 366 days"):
        parse_duration("99999999999h")
    assert parse_duration("366d".replace("d", "") + "h") == 366 * 3600


# --- 8. paths that cannot be written are one line, and leave nothing ------------------------


def test_unwritable_or_impossible_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, match in ((afile / "sub", "is a file, not a folder"),
                       (tmp_path / ("n" * 300), "more than the 255"),
                       (tmp_path / "/".join(["abcdefgh"] * 520), "path is too long")):
        assert main([*TINY_ARGS, "--out", str(out)]) == 2
        assert match in _one_error_line(capsys)
    # a read-only parent: root may write anywhere, so the refusal of the OS is simulated
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(ro) else real(p, m))
    assert main([*TINY_ARGS, "--out", str(ro / "run")]) == 2
    assert "is not writable for you" in _one_error_line(capsys)
    assert list(ro.iterdir()) == []


def test_a_write_that_fails_during_training_is_one_error_line(tmp_path, capsys, monkeypatch):
    """A PermissionError (or a full disk) while saving: one line naming the file and what
    stays, never a traceback."""
    from minunet.training import runfolder

    def refuse(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(runfolder, "save_checkpoint", refuse)
    assert main([*TINY_ARGS, "--out", str(tmp_path / "run")]) == 1
    err = _one_error_line(capsys)
    assert "best.npz: Permission denied" in err and "continue with --resume" in err


def test_export_names_and_paths_that_cannot_be_written_are_one_line(tmp_path, capsys):
    assert main([*TINY_ARGS, "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "last.npz")
    for out, match in ((tmp_path / ("m" * 252 + ".onnx"), "more than the 255"),
                       (tmp_path / "run" / "last.npz" / "x.onnx", "is a file, not a folder")):
        with pytest.raises(SystemExit) as e:
            export_module.main(["--checkpoint", ckpt, "--to", "onnx", "--out", str(out)])
        assert match in str(e.value) and str(e.value).startswith("error: ")


# --- 9. the smaller points -----------------------------------------------------------


def test_a_bioimageio_folder_gets_the_umask_mode(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("safetensors")
    assert main([*TINY_ARGS, "--out", str(tmp_path / "run")]) == 0
    old = os.umask(0o022)
    try:
        export_module.main(["--checkpoint", str(tmp_path / "run" / "last.npz"),
                            "--to", "bioimageio", "--out", str(tmp_path / "pkg")])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pkg").stat().st_mode) == 0o755


def test_class_masks_with_many_gray_values_or_gaps_are_refused(tmp_path):
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 30), 100, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        gray = (np.arange(900).reshape(30, 30) % 223).astype(np.uint8)
        Image.fromarray(gray).save(tmp_path / "masks" / f"{i}.png")
    with pytest.raises(DataError, match="223 different values .*, more than 32 classes"):
        load_folder(tmp_path, mask_kind="classes")
    for i in range(3):
        Image.fromarray(np.where(np.eye(30) > 0, 3, 0).astype(np.uint8)).save(
            tmp_path / "masks" / f"{i}.png")
    with pytest.raises(DataError, match="leave out 1, 2"):
        load_folder(tmp_path, mask_kind="classes")


def test_instances_of_a_label_image_is_an_error_not_zero_cells(tmp_path, capsys):
    labels = np.zeros((64, 64), np.uint16)
    labels[5:20, 5:20], labels[30:50, 30:50] = 1, 2
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    code = instances_module.main([str(tmp_path / "labels.tif"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = _one_error_line(capsys)
    assert "no pixel is above --threshold" in err and "is it a label image?" in err


def test_stale_temporary_files_are_removed_when_a_run_goes_on(tmp_path):
    run = tmp_path / "run"
    assert Trainer(_cfg(tmp_path, "run", iters=4), quiet=True).run() == 0
    (run / ".last.npz.1234abcd.tmp").write_bytes(b"half a checkpoint")  # a write killed
    t = Trainer(TrainConfig(**TINY), resume=str(run / "last.npz"), quiet=True, given=set())
    assert not (run / ".last.npz.1234abcd.tmp").exists()
    t.sampler.close()


def test_check_writable_accepts_a_new_nested_folder(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c", "--out")
    assert not (tmp_path / "a").exists()


def test_predict_and_export_refuse_a_checkpoint_with_nan_weights(tmp_path, capsys):
    """A checkpoint made NaN by hand (saving refuses one) is refused by predict and export with
    one line naming the parameter, instead of predicting a constant."""
    from minunet import predict as predict_module

    assert main([*TINY_ARGS, "--out", str(tmp_path / "run")]) == 0
    good = tmp_path / "run" / "last.npz"
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["final.weight"] = np.full_like(arrays["final.weight"], np.nan)
    bad = tmp_path / "nan.npz"
    np.savez(bad, **arrays)
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(tmp_path / "img.png")
    for command in (
            lambda: predict_module.main(["--checkpoint", str(bad), str(tmp_path / "img.png"),
                                         "--out", str(tmp_path / "pred")]),
            lambda: export_module.main(["--checkpoint", str(bad), "--to", "onnx",
                                        "--out", str(tmp_path / "m.onnx")])):
        with pytest.raises(SystemExit) as e:
            command()
        assert "final.weight holds 4 NaN or infinite value(s) of 4" in str(e.value)
        assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert not (tmp_path / "pred").exists() and not (tmp_path / "m.onnx").exists()
