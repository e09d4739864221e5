"""Loaders on small generated files: formats, pairing, validation split, and clear errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from minunet.data.loaders import (
    DataError,
    as_holdout,
    as_index_list,
    isbi_default_split,
    load_dataset,
    load_folder,
    load_isbi2012,
    split_indices,
    to_float_image,
    to_label,
)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


def make_folder(root, n=5, mask="masks", shape=(24, 32), values=(0, 255)):
    rng = np.random.default_rng(0)
    for i in range(n):
        write(root / "images" / f"s{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
        write(root / mask / f"s{i}.png", rng.choice(np.array(values, np.uint8), shape))
    return root


def test_folder_binary_png(tmp_path):
    d = load_folder(make_folder(tmp_path), val=0.4)
    assert [s.name for s in d.train] == ["s0", "s1", "s2"]
    assert [s.name for s in d.val] == ["s3", "s4"]
    s = d.train[0]
    raw = np.asarray(Image.open(tmp_path / "images" / "s0.png"))
    np.testing.assert_array_equal(s.image, raw.astype(np.float32) / 255)
    assert s.image.dtype == np.float32 and s.label.dtype == np.int64
    assert set(np.unique(s.label).tolist()) == {0, 1} and s.instances is None
    assert d.n_classes == 2
    assert d.stack("train")[0].shape == (3, 24, 32)


def test_folder_with_labels_subfolder_and_spec(tmp_path):
    make_folder(tmp_path, n=5, mask="labels")
    d = load_dataset(f"folder:{tmp_path}")
    assert len(d.train) == 4 and len(d.val) == 1  # default: last 20 %


def test_16bit_tiff_and_rgb_images(tmp_path):
    img16 = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    write(tmp_path / "images" / "a.tif", img16)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 1] = 200
    write(tmp_path / "images" / "b.png", rgb)
    for stem in "ab":
        write(tmp_path / "masks" / f"{stem}.tif", np.eye(20, 30, dtype=np.uint16) * 7)
    d = load_folder(tmp_path, val=None)  # 16 bits: percentiles 1 and 99.8 by default
    a, b = d.train
    lo, hi = np.percentile(img16.astype(np.float64), [1, 99.8])
    np.testing.assert_allclose(a.image, np.clip((img16 - lo) / (hi - lo), 0, 1), atol=1e-6)
    np.testing.assert_allclose(b.image, 0.587 * 200 / 255, rtol=1e-5)  # 8 bits: / 255
    np.testing.assert_array_equal(a.label, np.eye(20, 30))
    a = load_folder(tmp_path, val=None, normalize="max").train[0]  # the type's maximum
    np.testing.assert_allclose(a.image, img16 / 65535, rtol=1e-6)


def test_class_and_instance_masks(tmp_path):
    make_folder(tmp_path, n=2, values=(0, 1, 2))
    d = load_folder(tmp_path, mask_kind="classes", val=None)
    assert d.n_classes == 3
    inst = np.zeros((24, 32), np.uint16)
    inst[2:12, 2:12], inst[2:12, 12:22] = 1, 300  # touching instances
    write(tmp_path / "masks" / "s0.png", inst)
    write(tmp_path / "masks" / "s1.png", inst)
    d = load_folder(tmp_path, mask_kind="instances", val=None)
    s = d.train[0]
    np.testing.assert_array_equal(s.instances, inst)
    assert not s.label[2:12, 11:13].any() and s.label[2:12, 2:11].all()  # separation border


def test_unpaired_files_are_listed(tmp_path):
    make_folder(tmp_path, n=3)
    (tmp_path / "images" / "s1.png").rename(tmp_path / "images" / "x1.png")
    with pytest.raises(DataError) as err:
        load_folder(tmp_path)
    assert "x1" in str(err.value) and "s1" in str(err.value) and "rename" in str(err.value)


def test_size_mismatch_names_both(tmp_path):
    make_folder(tmp_path, n=2)
    write(tmp_path / "masks" / "s1.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"s1\.png is 24x32.*s1\.png is 10x10"):
        load_folder(tmp_path)


def test_wrong_label_kind_reports_values(tmp_path):
    make_folder(tmp_path, n=2, values=(0, 1, 5))
    with pytest.raises(DataError, match=r"found \{0, 1, 5\}.*'classes'"):
        load_folder(tmp_path, mask_kind="binary")
    with pytest.raises(DataError, match="looks binary"):
        to_label(np.array([[0, 255]]), "classes")
    with pytest.raises(DataError, match="integers"):
        to_label(np.array([[0.5, 1.0]]), "instances")
    with pytest.raises(DataError, match="mask kind 'nope' unknown"):
        load_folder(tmp_path, mask_kind="nope")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"isbi2012:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset("folder:")
    with pytest.raises(DataError, match="not understood"):
        load_dataset("imagenet")


def test_float_images_must_be_in_unit_range():
    assert to_float_image(np.full((2, 2), 0.5)).dtype == np.float32
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        to_float_image(np.full((2, 2), 3.0))


def test_isbi_stacks(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)
    lab = rng.choice(np.array([0, 255], np.uint8), (4, 16, 16))
    pages = {"photometric": "minisblack"}  # a stack of gray pages, as the challenge files
    tifffile.imwrite(tmp_path / "train-volume.tif", vol, **pages)
    tifffile.imwrite(tmp_path / "train-labels.tif", lab, **pages)
    tifffile.imwrite(tmp_path / "test-volume.tif", vol[:2], **pages)
    d = load_isbi2012(tmp_path / "train-volume.tif", val=[1])
    assert len(d.train) == 2 and len(d.val) == 1 and len(d.test) == 2
    assert [s.name for s in d.holdout] == ["slice 3"]  # the default held-out sixth stays
    np.testing.assert_array_equal(d.val[0].label, lab[1] == 255)
    np.testing.assert_allclose(d.val[0].image, vol[1] / 255, rtol=1e-6)
    tifffile.imwrite(tmp_path / "train-labels.tif", lab // 2, **pages)  # {0, 127}: not ISBI
    with pytest.raises(DataError, match=r"\{0, 255\}, found \{0, 127\}"):
        load_isbi2012(tmp_path)


def test_isbi_slice_folder(tmp_path):
    make_folder(tmp_path, n=4, mask="labels")
    d = load_dataset(f"isbi2012:{tmp_path}", val=[0, 3])
    assert [s.name for s in d.val] == ["s0", "s3"] and d.test == []


def test_synthetic_specs():
    d = load_dataset("synthetic:n=3,size=48,seed=2")
    assert len(d.train) == 2 and len(d.val) == 1
    s = d.train[0]
    assert s.image.shape == (48, 48) and s.image.dtype == np.float32
    assert s.label.dtype == np.int64 and s.instances is not None
    assert len(load_dataset("cells:n=2,size=48").train) == 1
    with pytest.raises(DataError, match="size=..."):
        load_dataset("synthetic:sz=3")


def test_split_indices():
    assert split_indices(30, 1 / 6) == (list(range(25)), list(range(25, 30)))
    assert split_indices(4, 1) == ([0, 1, 2], [3])
    assert split_indices(4, None) == ([0, 1, 2, 3], [])
    assert split_indices(1, 0.2) == ([0], [])  # a single image trains, nothing to validate
    assert split_indices(5, [4, 0]) == ([1, 2, 3], [0, 4])
    with pytest.raises(DataError, match="out of range"):
        split_indices(5, [5])
    with pytest.raises(DataError, match="all 2 images"):
        split_indices(2, [0, 1])


def test_cli_val_parsing():
    assert as_index_list("25,26,27") == [25, 26, 27]
    assert as_index_list("0.2") == 0.2 and as_index_list("5") == 5
    assert as_index_list("") is None and as_index_list(None) is None
    with pytest.raises(DataError, match="--val 'last' not understood: give slice indices"):
        as_index_list("last")


def test_isbi_default_split_fits_any_count(tmp_path):
    """The protocol (docs/DESIGN.md, "ISBI 2012 protocol"): train 00-22, choose on 23-24,
    score 25-29; smaller stacks keep each part while one slice is left to train on."""
    assert isbi_default_split(30) == ([23, 24], [25, 26, 27, 28, 29])
    assert isbi_default_split(12) == ([9], [10, 11])
    assert isbi_default_split(3) == ([1], [2])
    assert isbi_default_split(2) == ([1], []) and isbi_default_split(1) == ([], [])
    make_folder(tmp_path, n=4, mask="labels")
    d = load_dataset(f"isbi2012:{tmp_path}")  # 23..29 would be out of range
    assert [s.name for s in d.train] == ["s0", "s1"] and [s.name for s in d.val] == ["s2"]
    assert [s.name for s in d.holdout] == ["s3"]


def test_isbi_validation_and_holdout_given(tmp_path):
    for i in range(30):
        write(tmp_path / "images" / f"{i:02d}.png", np.full((8, 8), i, np.uint8))
        write(tmp_path / "labels" / f"{i:02d}.png", np.full((8, 8), 255, np.uint8))
    names = lambda samples: [int(s.name) for s in samples]  # noqa: E731
    d = load_dataset(f"isbi2012:{tmp_path}")
    assert names(d.train) == list(range(23)) and names(d.val) == [23, 24]
    assert names(d.holdout) == [25, 26, 27, 28, 29]
    d = load_dataset(f"isbi2012:{tmp_path}", val=[25, 26])  # the old walk-through's --val
    assert names(d.val) == [25, 26] and names(d.holdout) == [27, 28, 29]
    assert 23 in names(d.train)
    d = load_dataset(f"isbi2012:{tmp_path}", holdout=[])  # --holdout none: 25-29 train
    assert names(d.val) == [23, 24] and names(d.train) == [*range(23), *range(25, 30)]
    d = load_dataset(f"isbi2012:{tmp_path}", val=2, holdout=[0, 1])  # a count: the last two left
    assert names(d.val) == [28, 29] and names(d.holdout) == [0, 1]
    with pytest.raises(DataError, match="both validation and held out"):
        load_dataset(f"isbi2012:{tmp_path}", val=[3], holdout=[3])
    with pytest.raises(DataError, match="held-out indices \\[30\\] out of range"):
        load_dataset(f"isbi2012:{tmp_path}", holdout=[30])
    d = load_dataset(f"folder:{tmp_path}", holdout=[0])  # other sources: none unless given
    assert len(d.holdout) == 1 and len(d.val) == 6 and len(d.train) == 23


def test_holdout_option_parses():
    assert as_holdout("25-29") == [25, 26, 27, 28, 29]
    assert as_holdout("25, 27") == [25, 27] and as_holdout("7") == [7]
    assert as_holdout("none") == [] and as_holdout("") is None
    with pytest.raises(DataError, match="--holdout 'last' not understood"):
        as_holdout("last")


def test_a_file_that_is_no_image_is_named(tmp_path):
    make_folder(tmp_path, n=2)
    (tmp_path / "images" / "s1.png").write_bytes(b"GIF89a, or so it says")
    with pytest.raises(DataError, match=r"s1\.png is not a readable image \(Unidentified"):
        load_folder(tmp_path)
    (tmp_path / "images" / "s1.png").unlink()
    (tmp_path / "images" / "s1.tif").write_bytes(b"II*\x00 and then nothing")
    with pytest.raises(DataError, match=r"s1\.tif is not a readable image"):
        load_folder(tmp_path)


def test_palette_masks_keep_indices_and_palette_images_become_gray(tmp_path):
    idx = np.zeros((8, 8), np.uint8)
    idx[:, 4:] = 2
    pal = Image.frombytes("P", (8, 8), idx.tobytes())
    pal.putpalette([0, 0, 0, 255, 0, 0, 255, 255, 255] + [0] * 759)
    pal.save(tmp_path / "p.png")
    from minunet.data.loaders import read_array

    np.testing.assert_array_equal(read_array(tmp_path / "p.png", mask=True), idx)
    gray = to_float_image(read_array(tmp_path / "p.png"))
    np.testing.assert_allclose(gray[:, 4:], 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- normalisation


def test_percentile_normalisation_of_16_bit_images():
    from minunet.data.loaders import normalize_image, resolved_normalize

    rng = np.random.default_rng(3)
    img = (rng.random((40, 50)) * 4000 + 200).astype(np.uint16)  # a 12-bit camera's range
    lo, hi = np.percentile(img.astype(np.float64), [1, 99.8])
    want = np.clip((img - lo) / (hi - lo), 0, 1)
    got = to_float_image(img)  # auto: 16 bits -> percentiles 1, 99.8
    assert got.dtype == np.float32 and got.min() == 0.0 and got.max() == 1.0
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(to_float_image(img, normalize="max"), img / 65535, rtol=1e-6)
    lo, hi = np.percentile(img.astype(np.float64), [5, 95])
    np.testing.assert_allclose(to_float_image(img, normalize="percentile:5,95"),
                               np.clip((img - lo) / (hi - lo), 0, 1), atol=1e-6)
    u8 = img.astype(np.uint8)
    np.testing.assert_array_equal(to_float_image(u8), u8 / np.float32(255))  # 8 bits: / 255
    assert resolved_normalize(np.uint8) == "max"
    assert resolved_normalize(np.uint16) == "percentile:1,99.8"
    assert resolved_normalize(np.float32) == "float"
    assert resolved_normalize(np.uint8, "percentile") == "percentile:1,99.8"
    np.testing.assert_array_equal(normalize_image(np.full((3, 3), 7, np.uint16)), 0)  # flat
    with pytest.raises(DataError, match="normalisation 'percentile:9,2' not understood"):
        to_float_image(img, normalize="percentile:9,2")
    with pytest.raises(DataError, match="not understood"):
        load_dataset("synthetic:n=2,size=40", normalize="zscore")


def test_instance_mask_that_is_binary_and_masks_for_other_sources(tmp_path):
    two = np.zeros((24, 32), np.uint8)
    two[2:8, 2:8] = two[12:20, 12:20] = 255  # two objects, one value: a binary mask
    with pytest.raises(DataError, match="single value 255 on 2 separate objects.*'binary'"):
        to_label(two, "instances")
    one = np.zeros((24, 32), np.uint8)
    one[2:8, 2:8] = 255  # one cell: a fine instance mask
    assert to_label(one, "instances")[1].max() == 255
    label, _ = to_label(np.array([[0, 2], [2, 0]]), "classes")  # classes {0, 2}: not binary
    assert label.max() == 2
    with pytest.raises(DataError, match="mask kind 'classes' does not fit synthetic"):
        load_dataset("synthetic:n=2,size=40", mask_kind="classes")
    with pytest.raises(DataError, match="mask kind 'blobs' unknown"):
        load_dataset("synthetic:n=2,size=40", mask_kind="blobs")
    d = load_dataset("cells:n=2,size=48", mask_kind="instances")
    assert d.train[0].instances is not None


def test_folder_of_16_bit_images_with_instance_masks(tmp_path):
    from minunet.data.synthetic import touching_cells

    for i in range(2):
        c = touching_cells(64, seed=i)
        write(tmp_path / "images" / f"c{i}.tif", c.image.astype(np.uint16) * 16 + 300)
        write(tmp_path / "masks" / f"c{i}.tif", c.instances.astype(np.uint16))
    d = load_dataset(f"folder:{tmp_path}", val=None, mask_kind="instances")
    s = d.train[0]
    assert s.image.min() == 0.0 and s.image.max() == 1.0  # stretched by percentiles
    c = touching_cells(64, seed=0)
    np.testing.assert_array_equal(s.instances, c.instances)
    np.testing.assert_array_equal(s.label, c.mask > 0)  # separation borders removed
