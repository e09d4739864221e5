"""`python -m minunet.predict` (minunet/predict.py): outputs, formats, errors. Trains nothing: a
tiny untrained U-Net is saved as a checkpoint and the CLI's main(argv) runs on tmp files."""

from __future__ import annotations

from csv import DictReader
from dataclasses import asdict

import numpy as np
import pytest
import tifffile
from PIL import Image

from minunet.files import atomic_write
from minunet.inference.tiles import predict
from minunet.models.unet import UNetConfig, build_model
from minunet.predict import main
from minunet.training.checkpoint import save_checkpoint


def make_checkpoint(path, **config):
    model = build_model(UNetConfig(base=2, **config), seed=5)
    cfg = {"train": {}, "model": asdict(model.config), "optimizer": {}}
    save_checkpoint(path, model.state_dict(), {}, 0, cfg, {"seed": 0}, arch=model.arch)
    return model.eval()


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.npz"
    return path, make_checkpoint(path)


def expected_prob(model, image_u8):
    return predict(model, image_u8.astype(np.float32) / 255)[1]


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def test_folder_of_pngs(tmp_path, ckpt):
    path, model = ckpt
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    images = {"a": rng.integers(0, 256, (40, 50), dtype=np.uint8),
              "b": rng.integers(0, 256, (33, 21), dtype=np.uint8)}
    for stem, im in images.items():
        Image.fromarray(im).save(src / f"{stem}.png")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), str(src), "--out", str(out)]) == 0
    for stem, im in images.items():
        p = expected_prob(model, im)
        prob = read_png(out / "prob" / f"{stem}.png")
        assert prob.dtype == np.uint8 and prob.shape == im.shape
        assert np.abs(prob.astype(int) - np.rint(p * 255)).max() <= 1  # float32 rounding
        mask = read_png(out / "mask" / f"{stem}.png")
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, p > 0.5)
        ov = read_png(out / "overlay" / f"{stem}.png")
        assert ov.shape == (*im.shape, 3) and ov.dtype == np.uint8
    assert not list(out.rglob("*.tmp"))


def test_float_tiff_stack_tta_and_threshold(tmp_path, ckpt):
    path, model = ckpt
    rng = np.random.default_rng(1)
    stack = rng.random((2, 20, 18)).astype(np.float32)
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), str(tmp_path / "vol.tif"), "--out", str(out),
                 "--float", "--tta", "4", "--threshold", "0.3", "--batch", "2",
                 "--device", "cpu"]) == 0
    prob = tifffile.imread(out / "prob" / "vol.tif")
    assert prob.shape == (2, 20, 18) and prob.dtype == np.float32
    want = np.stack([predict(model, s, tta=4)[1] for s in stack])
    np.testing.assert_allclose(prob, want, rtol=0, atol=1e-6)
    mask = tifffile.imread(out / "mask" / "vol.tif")
    np.testing.assert_array_equal(mask == 255, prob > 0.3)
    assert sorted(p.name for p in (out / "overlay").iterdir()) == [
        "vol_000.png", "vol_001.png"]


def test_rgb_input_becomes_gray_and_tile_option(tmp_path, ckpt):
    path, model = ckpt
    rgb = np.random.default_rng(2).integers(0, 256, (45, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), str(tmp_path / "c.png"), "--out", str(out),
                 "--tile", "204"]) == 0
    gray = (rgb.astype(np.float32) / 255) @ np.array([0.299, 0.587, 0.114], np.float32)
    p = predict(model, gray)[1]
    prob = read_png(out / "prob" / "c.png")
    assert np.abs(prob.astype(int) - np.rint(p * 255)).max() <= 1


def test_more_than_two_classes(tmp_path):
    path = tmp_path / "m3.npz"
    model = make_checkpoint(path, n_classes=3)
    im = np.random.default_rng(3).integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(im).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), str(tmp_path / "x.png"), "--out", str(out)]) == 0
    probs = predict(model, im.astype(np.float32) / 255)
    prob = tifffile.imread(out / "prob" / "x.tif")
    assert prob.shape == (3, 20, 24)
    np.testing.assert_array_equal(read_png(out / "mask" / "x.png"), probs.argmax(0))


def test_clear_errors(tmp_path, ckpt):
    path, _ = ckpt
    im = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(im)
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--checkpoint", str(tmp_path / "missing.npz"), str(im), "--out", out])
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(SystemExit, match="is not an image"):
        main(["--checkpoint", str(path), str(notes), "--out", out])
    fake = tmp_path / "fake.png"
    fake.write_text("not a png")
    with pytest.raises(SystemExit, match="not a readable image"):
        main(["--checkpoint", str(path), str(fake), "--out", out])
    with pytest.raises(SystemExit, match="nearest valid sizes are 188 or 204"):
        main(["--checkpoint", str(path), str(im), "--out", out, "--tile", "200"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--checkpoint", str(path), str(tmp_path / "nope.png"), "--out", out])
    two = tmp_path / "two.npz"
    make_checkpoint(two, in_channels=2)
    with pytest.raises(SystemExit, match=r"1 channel\(s\).*in_channels=2"):
        main(["--checkpoint", str(two), str(im), "--out", out])
    not_ckpt = tmp_path / "bad.npz"
    np.savez(not_ckpt, x=np.zeros(3))
    with pytest.raises(SystemExit, match="not a minunet training checkpoint"):
        main(["--checkpoint", str(not_ckpt), str(im), "--out", out])
    with pytest.raises(SystemExit):  # argparse: --tta must be 1, 4 or 8
        main(["--checkpoint", str(path), str(im), "--out", out, "--tta", "2"])
    assert not (tmp_path / "out").exists()  # nothing written on errors


def test_a_checkpoint_that_is_no_npz_or_of_an_unknown_architecture(tmp_path, ckpt):
    im = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(im)
    out = str(tmp_path / "out")
    text = tmp_path / "model.npz"
    text.write_text("weights, honestly")
    with pytest.raises(SystemExit) as err:
        main(["--checkpoint", str(text), str(im), "--out", out])
    assert "is not a minunet checkpoint" in str(err.value)
    assert "pickle" not in str(err.value).lower()
    other = tmp_path / "other.npz"
    model = build_model(UNetConfig(base=2))
    config = {"train": {}, "model": {**asdict(model.config), "arch": "segformer"}}
    save_checkpoint(other, model.state_dict(), {}, 0, config, {}, arch="segformer")
    with pytest.raises(SystemExit, match="unknown architecture 'segformer'; known: .*unet"):
        main(["--checkpoint", str(other), str(im), "--out", out])
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_from_before_arch_and_ops_still_predicts(tmp_path, ckpt):
    path, model = ckpt
    old = tmp_path / "old.npz"
    config = {k: v for k, v in asdict(model.config).items() if k not in ("arch", "ops")}
    save_checkpoint(old, model.state_dict(), {}, 0, {"model": config}, {})
    im = np.random.default_rng(4).integers(0, 256, (30, 30), dtype=np.uint8)
    Image.fromarray(im).save(tmp_path / "a.png")
    assert main(["--checkpoint", str(old), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out")]) == 0
    prob = read_png(tmp_path / "out" / "prob" / "a.png")
    assert np.abs(prob.astype(int) - np.rint(expected_prob(model, im) * 255)).max() <= 1


def test_atomic_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "x.png"

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert list((tmp_path / "sub").iterdir()) == []
    atomic_write(target, lambda f: f.write(b"whole"))
    assert target.read_bytes() == b"whole"


def test_every_option_has_help():
    from minunet.predict import build_parser

    parser = build_parser()
    assert not [a.dest for a in parser._actions if not (a.help or "").strip()]
    parser.format_help()  # raises on a stray % in a help text


# ----------------------------------------------------------------------------- instances


def test_instances_from_the_ground_truth_probability(tmp_path, ckpt, monkeypatch):
    """predict --instances on the synthetic touching cells, the network replaced by the
    ground-truth probability (the cells minus their separation borders): every cell comes back
    exactly (object F1 = 1 and SEG = 1 against the generator's instances), written as a 16-bit
    label image with a coloured overlay, and evaluate --instances scores the files so."""
    import minunet.predict as cli
    from minunet.data.synthetic import touching_cells
    from minunet.evaluate import main as evaluate
    from minunet.inference.instances import label_cells

    path, _ = ckpt
    cells = [touching_cells(256, seed=s) for s in range(2)]
    truth = {f"c{i}": c for i, c in enumerate(cells)}
    (tmp_path / "truth").mkdir()
    for stem, c in truth.items():
        Image.fromarray(c.image).save(tmp_path / f"{stem}.png")
        tifffile.imwrite(tmp_path / "truth" / f"{stem}.tif", c.instances.astype(np.uint16))
    by_image = {c.image.tobytes(): c for c in cells}

    def ground_truth(model, x, **kw):  # x: (1, H, W) = image / 255
        c = by_image[np.rint(x[0] * 255).astype(np.uint8).tobytes()]
        p = (c.mask / 255.0).astype(np.float32)
        return np.stack([1 - p, p])

    monkeypatch.setattr(cli, "predict", ground_truth)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), str(tmp_path / "c0.png"), str(tmp_path / "c1.png"),
                 "--out", str(out), "--instances"]) == 0
    for stem, c in truth.items():
        lab = tifffile.imread(out / "instances" / f"{stem}.tif")
        assert lab.dtype == np.uint16 and lab.shape == c.image.shape
        np.testing.assert_array_equal(lab, label_cells(c.mask / 255.0))
        ov = read_png(out / "instances_overlay" / f"{stem}.png")
        assert ov.shape == (*c.image.shape, 3)
    csv = tmp_path / "scores.csv"
    assert evaluate([str(out / "instances"), str(tmp_path / "truth"), "--instances",
                     "--csv", str(csv)]) == 0
    with open(csv, newline="") as f:
        all_ = next(r for r in DictReader(f) if r["slice"] == "all")
    assert float(all_["f1"]) == 1.0 and int(all_["fp"]) == 0 and int(all_["fn"]) == 0
    assert float(all_["seg"]) == 1.0 and float(all_["ap"]) == 1.0
    assert int(all_["n_true"]) == sum(int(c.instances.max()) for c in cells)


def test_instances_of_a_stack_and_a_k_class_model(tmp_path):
    path = tmp_path / "m3.npz"
    model = make_checkpoint(path, n_classes=3)
    stack = np.random.default_rng(6).integers(0, 256, (2, 30, 26), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), str(tmp_path / "vol.tif"), "--out", str(out),
                 "--instances", "--threshold", "0.4", "--min-size", "0", "--split-neck",
                 "0.3", "--fill-borders", "1"]) == 0
    from minunet.inference.instances import label_cells

    lab = tifffile.imread(out / "instances" / "vol.tif")
    assert lab.shape == (2, 30, 26) and lab.dtype == np.uint16
    for k in range(2):
        probs = predict(model, stack[k].astype(np.float32) / 255)
        want = label_cells(1 - probs[0], 0.4, 0.3, 0, 1)  # K > 2: every class but 0 is cell
        np.testing.assert_array_equal(lab[k], want)
    assert sorted(p.name for p in (out / "instances_overlay").iterdir()) == [
        "vol_000.png", "vol_001.png"]


def test_sixteen_bit_images_are_normalised_as_the_checkpoint_says(tmp_path):
    from minunet.data.loaders import to_float_image

    img = (np.random.default_rng(7).random((40, 36)) * 3000 + 500).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img)
    for normalize in ("auto", "max", "percentile:2,98"):
        path = tmp_path / f"{normalize.replace(':', '_')}.npz"
        model = build_model(UNetConfig(base=2), seed=5)
        cfg = {"train": {"normalize": normalize}, "model": asdict(model.config), "optimizer": {}}
        save_checkpoint(path, model.state_dict(), {}, 0, cfg, {"seed": 0}, arch=model.arch)
        out = tmp_path / normalize.replace(":", "_")
        assert main(["--checkpoint", str(path), str(tmp_path / "a.tif"), "--out", str(out),
                     "--float"]) == 0
        want = predict(model.eval(), to_float_image(img, normalize=normalize))[1]
        np.testing.assert_allclose(tifffile.imread(out / "prob" / "a.tif"), want, atol=1e-6)
    auto = tifffile.imread(tmp_path / "auto" / "prob" / "a.tif")
    plain = tifffile.imread(tmp_path / "max" / "prob" / "a.tif")
    assert np.abs(auto - plain).max() > 1e-3  # percentiles, not / 65535


def test_instance_options_are_checked(tmp_path, ckpt):
    path, _ = ckpt
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    for flag, value, message in (("--split-neck", "1.5", "--split-neck must lie in"),
                                 ("--min-size", "-1", "--min-size must be >= 0"),
                                 ("--fill-borders", "-2", "--fill-borders must be >= 0")):
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            main(["--checkpoint", str(path), str(tmp_path / "a.png"), "--out",
                  str(tmp_path / "out"), "--instances", flag, value])
    assert not (tmp_path / "out").exists()
