"""Cells from probabilities (minunet/inference/instances.py): the seeded watershed on the distance
transform, the neck rule, the separation borders given back (weightmap.fill_separation_borders),
and the synthetic touching cells (synthetic.settle_cells)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from minunet.data.synthetic import MIN_CORE, settle_cells, touching_cells
from minunet.data.weightmap import fill_separation_borders, separation_borders
from minunet.evaluation.objects import object_counts, object_scores
from minunet.inference.instances import colour_overlay, label_cells


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
    # truth's separation border would look the same), so the pair (0, 5), (0, 6) is filled
    assert out[0, 5] == 1 and out[0, 6] == 2
    lone = np.zeros((8, 8), np.int32)
    lone[2:5, 2:5] = 3
    np.testing.assert_array_equal(fill_separation_borders(lone, 2), lone)


def test_a_one_pixel_gap_and_a_pixel_without_a_partner_stay_background():
    # cells 1 px apart: the gap touches both, so it cannot be a removed border pixel
    gap = np.zeros((6, 9), np.int32)
    gap[1:5, 1:4], gap[1:5, 5:8] = 1, 2
    np.testing.assert_array_equal(fill_separation_borders(gap, 2), gap)
    # cells 3 px apart: only the middle column has both within 2 px, and a removed border is
    # two pixels wide, one of each cell; a single column has no partner and stays background
    wide = np.zeros((6, 11), np.int32)
    wide[1:5, 1:4], wide[1:5, 7:10] = 1, 2
    np.testing.assert_array_equal(fill_separation_borders(wide, 2), wide)
    # a pixel 2 px from a cell and 2 px from another, diagonally, with no partner: left alone
    diag = np.zeros((7, 7), np.int32)
    diag[0:2, 0:2], diag[5:7, 5:7] = 1, 2
    out = fill_separation_borders(diag, 2)
    assert out[3, 3] == 0


def test_filling_the_borders_then_removing_them_gives_the_cores_back():
    """Rules 2 and 3 of fill_separation_borders: the filled labels have the input's border-free
    mask, on arbitrary cores (random overlapping discs, each pixel to its nearest centre, as
    touching cells, without their separation borders)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for _ in range(5):
        centres, radii = rng.uniform(0, 64, (14, 2)), rng.uniform(4, 12, 14)
        d = np.hypot(yy[..., None] - centres[:, 0], xx[..., None] - centres[:, 1])  # (64, 64, 14)
        nearest = np.argmin(d, axis=-1)
        cells = np.where(np.take_along_axis(d, nearest[..., None], -1)[..., 0]
                         <= radii[nearest], nearest + 1, 0)
        cores = np.where(separation_borders(cells), 0, cells)
        out = fill_separation_borders(cores, 2)
        assert (out != cores).sum() > 20  # borders were given back ...
        np.testing.assert_array_equal(np.where(separation_borders(out), 0, out), cores)  # ... only


def test_settled_touching_cells_are_a_fixed_point_with_one_solid_core_each():
    for seed in range(3):
        c = touching_cells(200, seed=seed)
        np.testing.assert_array_equal(settle_cells(c.instances), c.instances)
        core = np.where(c.borders, 0, c.instances)
        pieces, n = ndimage.label(core > 0)  # 4-connectivity
        assert n == c.instances.max()  # one piece per cell
        assert np.bincount(core.ravel())[1:].min() >= MIN_CORE
        np.testing.assert_array_equal(c.mask > 0, core > 0)


def test_ground_truth_probability_of_touching_cells_gives_back_every_cell_exactly():
    """The 2-class truth of touching cells (the cells minus their separation borders, what the
    network learns) as the probability, labelled with the default options: the watershed splits
    and merges nothing and the borders go back to the right cells, so the labels equal the
    generator's instances pixel for pixel: F1 = 1, SEG = 1, AP = 1."""
    counts = []
    for seed in [*range(6), (99, 0)]:
        c = touching_cells(384 if isinstance(seed, tuple) else 256, seed=seed)
        pred = label_cells(c.mask / 255.0)
        np.testing.assert_array_equal(pred, c.instances)  # both numbered row by row
        counts.append(object_counts(c.instances, pred))
    s = object_scores(counts)
    assert s["n_true"] > 200
    assert (s["f1"], s["seg"], s["ap"], s["fp"], s["fn"]) == (1.0, 1.0, 1.0, 0, 0)
    # without the borders given back every cell is matched, but smaller by its border pixels
    c = touching_cells(256, seed=0)
    s0 = object_scores([object_counts(c.instances, label_cells(c.mask / 255.0,
                                                               fill_borders=0))])
    assert s0["f1"] == 1.0 and s0["seg"] < 0.95


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
