"""`python -m minunet.evaluate` (minunet/evaluate.py): pairing, formats, table and CSV, errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from PIL import Image

from minunet.evaluate import COLUMNS, main
from minunet.evaluation import metrics


def two_cells(h=24, w=25):
    truth = np.ones((h, w), bool)
    truth[:, 11:13] = False
    return truth


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folders_paired_by_stem(tmp_path, capsys):
    truth = two_cells()
    labels = (truth * 255).astype(np.uint8)
    gap = labels.copy()
    gap[8, 11:13] = 255  # merges the two cells
    save_png(tmp_path / "lab" / "s1.png", labels)
    save_png(tmp_path / "lab" / "s2.png", labels)
    save_png(tmp_path / "pred" / "s1.png", labels)  # perfect, 8-bit 0..255
    save_png(tmp_path / "pred" / "s2.png", gap)
    out = tmp_path / "scores.csv"
    assert main([str(tmp_path / "pred"), str(tmp_path / "lab"), "--csv", str(out)]) == 0
    table = capsys.readouterr().out
    assert "pixel_error" in table and "v_info" in table and "all" in table
    rows = read_csv(out)
    assert [r["slice"] for r in rows] == ["s1", "s2", "all"] and list(rows[0]) == list(COLUMNS)
    s1, s2, agg = ({k: float(v) for k, v in r.items() if k != "slice"} for r in rows)
    assert (s1["pixel_error"], s1["rand_error"], s1["v_rand"], s1["v_info"]) == (0, 0, 1, 1)
    assert s1["pixel_accuracy"] == 1 and s1["mean_iou"] == 1 and s1["dice_cell"] == 1
    want = metrics.isbi_scores(gap / 255.0, truth)
    assert s2["rand_error"] == pytest.approx(want.rand_error, abs=1e-6) and s2["rand_error"] > 0
    assert s2["v_rand"] == pytest.approx(want.v_rand, abs=1e-6)
    both = metrics.isbi_scores(np.stack([labels, gap]) / 255.0, np.stack([truth, truth]))
    for k in ("pixel_error", "rand_error", "v_rand", "v_info"):
        assert agg[k] == pytest.approx(getattr(both, k), abs=1e-6)
    assert agg["pixel_accuracy"] == pytest.approx(1 - 2 / (2 * truth.size), abs=1e-6)


def test_float_stacks_paired_page_by_page(tmp_path, capsys):
    truth = np.stack([two_cells(), two_cells()[::-1, ::-1], two_cells(25, 24).T])
    prob = np.where(truth, 0.7, 0.2).astype(np.float32)
    tifffile.imwrite(tmp_path / "pred.tif", prob, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", (truth * 255).astype(np.uint8),
                     photometric="minisblack")
    assert main([str(tmp_path / "pred.tif"), str(tmp_path / "labels.tif")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[1:] if not line.startswith("-")]
    assert names == ["pred[0]", "pred[1]", "pred[2]", "all"]
    for line in lines[1:]:
        if not line.startswith("-"):
            assert line.split()[1:5] == ["0.000000", "0.000000", "1.000000", "1.000000"]


def test_pairing_and_format_errors(tmp_path):
    lab = (two_cells() * 255).astype(np.uint8)
    save_png(tmp_path / "lab" / "a.png", lab)
    save_png(tmp_path / "lab" / "b.png", lab)
    save_png(tmp_path / "pred" / "a.png", lab)
    save_png(tmp_path / "pred" / "c.png", lab)
    unpaired = r"(?s)predictions without a partner.*: c.*labels without a partner.*: b"
    with pytest.raises(SystemExit, match=unpaired):
        main([str(tmp_path / "pred"), str(tmp_path / "lab")])
    with pytest.raises(SystemExit, match="two files .* or two folders"):
        main([str(tmp_path / "pred" / "a.png"), str(tmp_path / "lab")])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nothing"), str(tmp_path / "lab")])
    save_png(tmp_path / "small.png", lab[:10])
    with pytest.raises(SystemExit, match="differ in shape"):
        main([str(tmp_path / "small.png"), str(tmp_path / "lab" / "a.png")])
    save_png(tmp_path / "gray_labels.png", (np.arange(24 * 25) % 7).astype(np.uint8)
             .reshape(24, 25))
    with pytest.raises(SystemExit, match="gray_labels.png: truth must be binary"):
        main([str(tmp_path / "pred" / "a.png"), str(tmp_path / "gray_labels.png")])
    tifffile.imwrite(tmp_path / "big.tif", np.full((24, 25), 3.0, np.float32))
    with pytest.raises(SystemExit, match=r"float probabilities must lie in \[0, 1\]"):
        main([str(tmp_path / "big.tif"), str(tmp_path / "lab" / "a.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="holds no images"):
        main([str(tmp_path / "empty"), str(tmp_path / "lab")])


def test_end_to_end_with_predict(tmp_path):
    """predict writes prob/STEM.png; evaluate pairs that folder with the labels by stem."""
    from dataclasses import asdict

    from minunet.models.unet import UNetConfig, build_model
    from minunet.predict import main as predict_main
    from minunet.training.checkpoint import save_checkpoint

    model = build_model(UNetConfig(base=2), seed=1)
    ckpt = tmp_path / "m.npz"
    save_checkpoint(ckpt, model.state_dict(), {}, 0, {"model": asdict(model.config)}, {})
    rng = np.random.default_rng(0)
    for stem in ("25", "26"):
        save_png(tmp_path / "images" / f"{stem}.png", rng.integers(0, 256, (24, 25), np.uint8))
        save_png(tmp_path / "labels" / f"{stem}.png", (two_cells() * 255).astype(np.uint8))
    assert predict_main(["--checkpoint", str(ckpt), str(tmp_path / "images"),
                         "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "scores.csv"
    assert main([str(tmp_path / "out" / "prob"), str(tmp_path / "labels"), "--csv",
                 str(out)]) == 0
    rows = read_csv(out)
    assert [r["slice"] for r in rows] == ["25", "26", "all"]
    for r in rows:
        for k in COLUMNS[1:]:
            assert 0.0 <= float(r[k]) <= 1.0


def test_every_option_has_help():
    from minunet.evaluate import build_parser

    parser = build_parser()
    assert not [a.dest for a in parser._actions if not (a.help or "").strip()]
    parser.format_help()  # raises on a stray % in a help text


# ----------------------------------------------------------------------------- objects, classes


def four_cases():
    """The hand-worked image of tests/test_objects.py: T1 found, T2 split, T3 + T4 merged,
    T5 missed, P5 false. Returns (truth, prediction) uint16 label images (10, 30)."""
    t, p = np.zeros((10, 30), np.uint16), np.zeros((10, 30), np.uint16)
    t[0:4, 0:4], p[0:4, 0:4] = 1, 1
    t[0:4, 6:14] = 2
    p[0:4, 6:11], p[0:4, 11:14] = 2, 3
    t[6:10, 0:4], t[6:10, 4:8] = 3, 4
    p[6:10, 0:8] = 4
    t[6:10, 10:14] = 5
    p[6:10, 20:24] = 5
    return t, p


def test_instances_table_and_csv(tmp_path, capsys):
    from minunet.evaluate import OBJECT_COLUMNS

    t, p = four_cases()
    for folder, labels in (("truth", t), ("pred", p)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "a.tif", labels)
        # b: a binary mask of three separate cells, labelled by its 4-connected components
        save_png(tmp_path / folder / "b.png", (np.isin(t, (1, 2, 5)) * 255).astype(np.uint8))
    out = tmp_path / "objects.csv"
    assert main([str(tmp_path / "pred"), str(tmp_path / "truth"), "--instances", "--csv",
                 str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == list(OBJECT_COLUMNS)
    rows = {r["slice"]: r for r in read_csv(out)}
    a, b, all_ = rows["a"], rows["b"], rows["all"]
    assert (a["tp"], a["fp"], a["fn"], a["f1"]) == ("3", "2", "2", "0.600000")
    assert float(a["seg"]) == pytest.approx(2.625 / 5)
    assert (b["tp"], b["f1"], b["seg"], b["ap"]) == ("3", "1.000000", "1.000000", "1.000000")
    # pooled: 6 TP, 2 FP, 2 FN; SEG over the 8 reference objects
    assert (all_["n_true"], all_["tp"], all_["fp"], all_["fn"]) == ("8", "6", "2", "2")
    assert float(all_["f1"]) == pytest.approx(12 / 16)
    assert float(all_["seg"]) == pytest.approx((2.625 + 3) / 8)


def test_classes(tmp_path, capsys):
    truth = np.zeros((6, 8), np.uint8)
    truth[:, 3:6], truth[:, 6:] = 1, 2
    pred = truth.copy()
    pred[0, 3] = 2  # one class-1 pixel called 2
    save_png(tmp_path / "t.png", truth)
    save_png(tmp_path / "p.png", pred)
    out = tmp_path / "c.csv"
    assert main([str(tmp_path / "p.png"), str(tmp_path / "t.png"), "--classes", "--csv",
                 str(out)]) == 0
    row = read_csv(out)[-1]
    assert float(row["pixel_accuracy"]) == pytest.approx(47 / 48)
    assert float(row["iou_0"]) == 1.0
    assert float(row["iou_1"]) == pytest.approx(17 / 18)  # 17 right of 18 true class-1 pixels
    assert float(row["iou_2"]) == pytest.approx(12 / 13)
    assert float(row["dice_2"]) == pytest.approx(24 / 25)
    assert "iou_2" in capsys.readouterr().out


def test_label_mode_errors(tmp_path):
    prob = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "p.tif", prob)
    tifffile.imwrite(tmp_path / "t.tif", np.ones((8, 8), np.uint16))
    with pytest.raises(SystemExit, match="^error: p.tif: instances must be integers.*--instances"):
        main([str(tmp_path / "p.tif"), str(tmp_path / "t.tif"), "--instances"])
    with pytest.raises(SystemExit):  # argparse: one mode at a time
        main([str(tmp_path / "p.tif"), str(tmp_path / "t.tif"), "--instances", "--classes"])
    three = np.stack([prob, prob, prob])
    tifffile.imwrite(tmp_path / "k.tif", three, photometric="minisblack")
    with pytest.raises(SystemExit, match="--classes"):  # a K-class probability TIFF
        main([str(tmp_path / "k.tif"), str(tmp_path / "t.tif")])
