"""Cells from probabilities (minunet/instances.py): the seeded watershed on the distance
transform, the neck rule, the separation borders, and the synthetic touching cells."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from minunet.data.synthetic import touching_cells
from minunet.instances import colour_overlay, fill_separation_borders, label_cells
from minunet.objects import object_counts, object_scores


def discs(shape, *circles):
    """Union of discs (cy, cx, r) as a 0/1 float map."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape)
    for cy, cx, r in circles:
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1.0
    return out


def test_two_touching_discs_are_split_at_their_neck():
    # r = 12, centres 20 apart: the neck's half-width is sqrt(144 - 100) = 6.6 px, about 0.55 of
    # the radius, so split_neck 0.6 cuts it, 0.5 and 0 leave one cell
    p = discs((40, 64), (20, 20, 12), (20, 40, 12))
    two = label_cells(p, split_neck=0.6, fill_borders=0)
    assert two.max() == 2
    assert two[20, 20] != two[20, 40] and two[20, 20] > 0 and two[20, 40] > 0
    assert label_cells(p, split_neck=0.5, fill_borders=0).max() == 1
    assert label_cells(p, split_neck=0.0, fill_borders=0).max() == 1
    # a narrow neck (centres 23 apart: half-width 3.4 px, 0.28 of the radius) splits by default
    assert label_cells(discs((40, 64), (20, 20, 12), (20, 43, 12)), fill_borders=0).max() == 2


def test_a_wobbly_cell_with_several_maxima_stays_one():
    # a thick bar with bumps: distance maxima along its ridge, no neck
    p = np.zeros((40, 80))
    p[10:30, 10:70] = 1
    p[6:10, 20:26] = p[30:34, 50:56] = 1
    lab = label_cells(p, fill_borders=0)
    assert lab.max() == 1
    np.testing.assert_array_equal(lab > 0, p > 0.5)


def test_threshold_min_size_dtype_and_ids():
    p = np.zeros((30, 30))
    p[2:8, 2:8] = 0.9  # 36 px
    p[20:23, 20:23] = 0.9  # 9 px: below min_size 16
    p[12:18, 12:18] = 0.4  # below the threshold
    lab = label_cells(p)
    assert lab.dtype == np.uint16 and lab.max() == 1 and lab[4, 4] == 1
    assert label_cells(p, min_size=0).max() == 2
    assert label_cells(p, threshold=0.3).max() == 2
    assert label_cells(np.zeros((5, 5))).max() == 0
    with pytest.raises(ValueError, match="split_neck"):
        label_cells(p, split_neck=2)


def test_separation_borders_go_back_to_the_nearest_cell_and_cells_do_not_grow():
    lab = np.zeros((8, 12), np.int32)
    lab[1:7, 1:5] = 1  # columns 5 and 6 are the 2-px separation border
    lab[1:7, 7:11] = 2
    out = fill_separation_borders(lab, 2)
    np.testing.assert_array_equal(out[1:7, 5], 1)  # the nearer cell
    np.testing.assert_array_equal(out[1:7, 6], 2)
    # background along the cells' outer edges is left alone ...
    assert (out[0, :4] == 0).all() and (out[0, 8:] == 0).all() and (out[:, 0] == 0).all()
    # ... except where the border meets it: (0, 5) has both cells within 2 px (a pixel of the
    # truth's separation border would look the same), so it goes to the nearer one
    assert out[0, 5] == 1 and out[0, 6] == 2
    lone = np.zeros((8, 8), np.int32)
    lone[2:5, 2:5] = 3
    np.testing.assert_array_equal(fill_separation_borders(lone, 2), lone)


def test_ground_truth_probability_of_touching_cells_gives_back_every_cell():
    """The 2-class truth of touching cells (the cells minus their separation borders, what the
    network learns) as the probability: the watershed must not split or merge any cell.

    Its objects are the connected components of that mask; without dropping blobs or filling
    borders the instances equal them exactly: F1 = 1 and SEG = 1."""
    counts = []
    for seed in range(6):
        c = touching_cells(256, seed=seed)
        truth = ndimage.label(c.mask > 0, structure=np.ones((3, 3)))[0]
        pred = label_cells(c.mask / 255.0, min_size=0, fill_borders=0)
        counts.append(object_counts(truth, pred))
    s = object_scores(counts)
    assert s["n_true"] > 150
    assert (s["f1"], s["seg"], s["ap"], s["fp"], s["fn"]) == (1.0, 1.0, 1.0, 0, 0)


def test_ground_truth_probability_against_the_full_instances():
    """The same probability with the default options, scored against the generator's full
    instances (the separation border pixels belong to the cells there). Every cell is found
    (F1 = 1). The Jaccard indices stay below 1: the 2-class truth deleted the border pixels, and
    where a border meets the background a deleted cell pixel and a background pixel with two
    cells in its 3x3 window look the same, so filling the borders back gets a few pixels per
    contact wrong (about 1.5 % of a cell's area here)."""
    counts, unfilled = [], []
    for seed in range(5):
        c = touching_cells(256, seed=seed)
        counts.append(object_counts(c.instances, label_cells(c.mask / 255.0)))
        unfilled.append(object_counts(c.instances, label_cells(c.mask / 255.0, fill_borders=0)))
    s, s0 = object_scores(counts), object_scores(unfilled)
    assert s["f1"] == 1.0
    assert 0.98 < s["seg"] < 1.0
    assert s0["seg"] < s["seg"] - 0.05  # the borders given back are worth 5+ points of SEG


def test_colour_overlay():
    gray = np.full((6, 8), 0.5, np.float32)
    lab = np.zeros((6, 8), np.uint16)
    lab[1:5, 1:4], lab[1:5, 4:7] = 1, 2
    rgb = colour_overlay(gray, lab)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 128).all()  # background stays gray
    assert not np.array_equal(rgb[2, 2], rgb[2, 5])  # two cells, two colours


def test_command_line_labels_saved_probability_maps_like_label_cells(tmp_path, capsys):
    """python -m minunet.instances: 8-bit PNG and float TIFF stacks of P(cell) -> the same
    labels as label_cells with those options; bad options are one error line."""
    import tifffile
    from PIL import Image

    from minunet.instances import main

    cells = [touching_cells(160, seed=(5, i)) for i in range(2)]
    (tmp_path / "prob").mkdir()
    Image.fromarray(cells[0].mask).save(tmp_path / "prob" / "a.png")
    stack = np.stack([c.mask / np.float32(255) for c in cells])  # (2, H, W) float32
    tifffile.imwrite(tmp_path / "prob" / "b.tif", stack)
    assert main([str(tmp_path / "prob"), "--out", str(tmp_path / "out"), "--split-neck", "0.3",
                 "--fill-borders", "1"]) == 0
    a = tifffile.imread(tmp_path / "out" / "instances" / "a.tif")
    b = tifffile.imread(tmp_path / "out" / "instances" / "b.tif")
    assert a.dtype == np.uint16 and b.shape == (2, 160, 160)
    for got, c in ((a, cells[0]), (b[0], cells[0]), (b[1], cells[1])):
        np.testing.assert_array_equal(got, label_cells(c.mask / 255.0, split_neck=0.3,
                                                       fill_borders=1))
    assert sorted(p.name for p in (tmp_path / "out" / "instances_overlay").iterdir()) == [
        "a.png", "b_000.png", "b_001.png"]
    capsys.readouterr()
    assert main([str(tmp_path / "prob"), "--out", str(tmp_path / "o2"), "--split-neck", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --split-neck must lie in [0, 1]") and err.count("\n") == 1
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3")]) == 2
    assert "does not exist" in capsys.readouterr().err
