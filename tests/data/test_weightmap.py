"""The paper's weight map on hand-made cases, and the fast windowed border term vs brute force."""

import numpy as np
import pytest
from scipy import ndimage

from minunet.data.synthetic import touching_cells
from minunet.data.weightmap import (
    border_term,
    cached_weight_map,
    class_balance,
    instances_to_mask,
    plot_weightmap,
    separation_borders,
    weight_map,
)


def two_squares(gap):
    """Two 10x10 cells in a 40x50 image, `gap` background columns between them."""
    inst = np.zeros((40, 50), np.int64)
    inst[10:20, 5:15] = 1
    inst[10:20, 15 + gap : 25 + gap] = 2
    return inst


@pytest.mark.parametrize("gap", [1, 4, 9])
def test_two_squares_gap_has_the_analytic_value(gap):
    inst = two_squares(gap)
    classes = (inst > 0).astype(np.int64)
    w = weight_map(classes, inst)
    wc_background = classes.size / (2 * np.count_nonzero(classes == 0))
    # a gap pixel j columns right of the left square: d1 + d2 = (j + 1) + (gap - j) = gap + 1
    expected = wc_background + 10.0 * np.exp(-((gap + 1) ** 2) / (2 * 5.0**2))
    np.testing.assert_allclose(w[10:20, 15 : 15 + gap], expected, rtol=1e-6)


def test_one_cell_has_no_border_term():
    inst = np.zeros((30, 30), np.int64)
    inst[5:20, 8:25] = 1
    classes = (inst > 0).astype(np.int64)
    assert not border_term(inst).any()
    np.testing.assert_array_equal(weight_map(classes), class_balance(classes))


def test_class_balance_equalises_weighted_totals():
    rng = np.random.default_rng(0)
    classes = (rng.random((50, 60)) < 0.2).astype(np.int64) + (rng.random((50, 60)) < 0.05)
    wc = class_balance(classes)
    totals = [wc[classes == k].sum() for k in range(3)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
    np.testing.assert_allclose(wc.mean(), 1.0, rtol=1e-5)


def test_border_term_only_on_background_and_between_two_cells():
    inst = two_squares(3)
    term = border_term(inst)
    assert not term[inst > 0].any()
    assert term[10:20, 15:18].min() > 10 * np.exp(-(4**2) / 50) - 1e-5
    far = np.zeros_like(inst, bool)
    far[35:, :] = True  # more than 26 px from the second cell: below 1e-6 * w0, set to 0
    assert not term[far].any()


def brute_force_border_term(inst, w0=10.0, sigma=5.0):
    """Reference: one full-image EDT per cell, sorted per pixel (no cutoff)."""
    n = inst.max()
    d = np.stack([ndimage.distance_transform_edt(inst != i) for i in range(1, n + 1)])
    d.sort(axis=0)
    term = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(inst == 0, term, 0.0)


def test_windowed_border_term_matches_brute_force():
    inst = touching_cells(96, seed=4).instances
    classes = instances_to_mask(inst)
    cells = np.where(classes > 0, inst, 0)
    fast = border_term(cells)
    np.testing.assert_allclose(fast, brute_force_border_term(cells), atol=10.0 * 1e-6)


def test_separation_borders_of_two_touching_squares():
    inst = np.zeros((20, 30), np.int64)
    inst[5:15, 5:15] = 1
    inst[5:15, 15:25] = 2
    borders = separation_borders(inst)
    expected = np.zeros_like(borders)
    expected[5:15, 14:16] = True  # on the cells: both columns along the shared edge
    np.testing.assert_array_equal(borders & (inst > 0), expected)
    # on the background: only the pixels that see both cells (the two ends of the edge)
    assert set(zip(*np.nonzero(borders & (inst == 0)), strict=True)) == {
        (4, 14), (4, 15), (15, 14), (15, 15)
    }
    mask = instances_to_mask(inst)
    assert not mask[:, 14:16].any() and mask[5:15, 5:14].all()
    w = weight_map(mask, inst)
    # a two-pixel border: one pixel from its own cell's rest, two from the other: d1 + d2 = 3
    np.testing.assert_allclose(
        w[5:15, 14:16] - class_balance(mask)[5:15, 14:16], 10 * np.exp(-9 / 50), rtol=1e-6
    )


def test_isbi_style_components_are_four_connected():
    classes = np.zeros((20, 20), np.int64)
    classes[2:9, 2:9] = 1
    classes[9:16, 9:16] = 1  # touches the first only diagonally: two cells in 4-connectivity
    w = weight_map(classes)
    # background pixel next to both corners: d1 = d2 = 1 (one 8-connected blob would give no term)
    np.testing.assert_allclose(
        w[9, 8] - class_balance(classes)[9, 8], 10 * np.exp(-4 / 50), rtol=1e-6
    )


def test_cache_returns_the_same_read_only_map():
    inst = two_squares(2)
    classes = (inst > 0).astype(np.int64)
    a = cached_weight_map(classes)
    b = cached_weight_map(classes.copy())
    assert a is b and not a.flags.writeable
    assert cached_weight_map(classes, sigma=3.0) is not a


def test_plot_weightmap_writes_a_png(tmp_path):
    inst = two_squares(3)
    classes = (inst > 0).astype(np.int64)
    path = plot_weightmap(classes.astype(float), classes, weight_map(classes), tmp_path / "w.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["w.png"]  # no temporary file left
