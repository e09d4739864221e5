"""From a folder of labelled images to a package for Fiji: train (--mask-kind instances and
classes, 16-bit images), predict --instances, evaluate --instances / --classes, export. A few
iterations of the tiny preset: this checks that the pieces fit, not that the model is good."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from minunet.data.synthetic import touching_cells
from minunet.evaluate import main as evaluate
from minunet.predict import main as predict
from minunet.train import main as train
from minunet.training.checkpoint import load_checkpoint


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cells_folder(root, kind):
    """Three touching-cells images as 16-bit TIFFs (a camera's 12 bits), with 16-bit instance
    masks (kind 'instances') or class masks 0 background, 1 cell, 2 separation border."""
    for i in range(3):
        c = touching_cells(200, seed=(7, i))
        tifffile.imwrite(root / "images" / f"c{i}.tif", c.image.astype(np.uint16) * 16 + 200)
        mask = c.instances.astype(np.uint16) if kind == "instances" else \
            np.where(c.borders & (c.instances > 0), 2, (c.mask > 0).astype(np.uint8))
        tifffile.imwrite(root / "masks" / f"c{i}.tif", mask)
    return root


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    return tmp_path


def test_instances_train_predict_evaluate_export(folder, capsys):
    data = cells_folder(folder / "data", "instances")
    run = folder / "run"
    assert train(["--data", f"folder:{data}", "--mask-kind", "instances", "--preset", "tiny",
                  "--iters", "3", "--val-every", "3", "--device", "cpu", "--out",
                  str(run)]) == 0
    ckpt = load_checkpoint(run / "last.npz")
    assert ckpt.config["train"]["mask_kind"] == "instances"
    assert ckpt.config["train"]["normalize"] == "auto"  # 16 bits: percentiles, recorded
    out = folder / "pred"
    assert predict(["--checkpoint", str(run / "last.npz"), str(data / "images"), "--out",
                    str(out), "--instances"]) == 0
    labels = tifffile.imread(out / "instances" / "c0.tif")
    assert labels.dtype == np.uint16 and labels.shape == (200, 200)
    assert evaluate([str(out / "instances"), str(data / "masks"), "--instances", "--csv",
                     str(folder / "objects.csv")]) == 0
    scores = rows(folder / "objects.csv")
    assert [r["slice"] for r in scores] == ["c0", "c1", "c2", "all"]
    assert all(0.0 <= float(r["f1"]) <= 1.0 for r in scores)
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    from minunet.export import main as export  # its sample: the first training image

    assert export(["--checkpoint", str(run / "last.npz"), "--to", "bioimageio", "--out",
                   str(folder / "package.zip")]) == 0
    said = capsys.readouterr().out
    assert "relative difference" in said
    import zipfile

    with zipfile.ZipFile(folder / "package.zip") as z:
        rdf = z.read("rdf.yaml").decode()
        x = np.load(z.open("test_input.npy"))
    assert x.dtype == np.uint16 and 'id: "scale_range"' in rdf  # 16 bits: percentiles
    assert export(["--checkpoint", str(run / "last.npz"), "--to", "onnx", "--out",
                   str(folder / "model.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(meta["minunet.config"])["n_classes"] == 2


def test_classes_train_predict_evaluate_export(folder):
    data = cells_folder(folder / "data", "classes")
    run = folder / "run"
    assert train(["--data", f"folder:{data}", "--mask-kind", "classes", "--preset", "tiny",
                  "--iters", "3", "--val-every", "3", "--device", "cpu", "--out",
                  str(run)]) == 0
    ckpt = load_checkpoint(run / "last.npz")
    assert ckpt.config["model"]["n_classes"] == 3
    out = folder / "pred"
    assert predict(["--checkpoint", str(run / "last.npz"), str(data / "images" / "c2.tif"),
                    "--out", str(out)]) == 0
    assert tifffile.imread(out / "prob" / "c2.tif").shape == (3, 200, 200)
    assert evaluate([str(out / "mask" / "c2.png"), str(data / "masks" / "c2.tif"), "--classes",
                     "--csv",
                     str(folder / "classes.csv")]) == 0
    assert {"iou_0", "iou_1", "iou_2"} <= set(rows(folder / "classes.csv")[-1])
    pytest.importorskip("onnxruntime")
    from minunet.export import load_for_export, minunet_probabilities, run_onnx
    from minunet.export import main as export

    assert export(["--checkpoint", str(run / "last.npz"), "--to", "onnx", "--out",
                   str(folder / "model.onnx")]) == 0
    _, model = load_for_export(str(run / "last.npz"))
    x = np.random.default_rng(0).random((1, 1, 204, 220), dtype=np.float32)
    import onnx

    got = run_onnx(onnx.load(str(folder / "model.onnx")), x)
    want = minunet_probabilities(model, x)
    assert got.shape == (1, 3, 20, 36)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_unknown_or_mismatched_mask_kinds_are_one_error_line(folder, capsys):
    data = cells_folder(folder / "data", "instances")
    with pytest.raises(SystemExit):  # argparse refuses a kind it does not know
        train(["--data", f"folder:{data}", "--mask-kind", "outlines", "--preset", "tiny"])
    assert "invalid choice: 'outlines'" in capsys.readouterr().err
    assert train(["--data", f"folder:{data}", "--mask-kind", "binary", "--preset", "tiny",
                  "--device", "cpu", "--out", str(folder / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "binary mask has at most one non-zero value" in err
    assert len(err.strip().splitlines()) == 1
    assert train(["--data", "synthetic:n=2,size=64", "--mask-kind", "classes", "--preset",
                  "tiny", "--device", "cpu", "--out", str(folder / "run")]) == 2
    assert "does not fit synthetic data" in capsys.readouterr().err
    assert not (folder / "run").exists()
