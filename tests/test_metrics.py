"""Metrics (minunet/evaluation/metrics.py) on tiny hand-made segmentations, hand-computed values.

Notation as in the module doc: A = sum n_ij^2 + n0, T = sum t_i^2, S = sum s_j^2 + n0 (Rand);
H(T), H(S), H(S,T), I (information). Segment ids below are written out pixel by pixel.
"""

from __future__ import annotations

import math
import os
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from minunet.evaluation import metrics as M

REPO = Path(__file__).resolve().parents[1]


def isbi_path():
    """The real ISBI 2012 data, as tests/data/test_isbi2012_real.py finds it: the folder in
    MINUNET_ISBI2012, else ../shared/data/isbi2012 next to the repository, else None."""
    env = os.environ.get("MINUNET_ISBI2012")
    if env:
        return Path(env)
    default = REPO / ".." / "shared" / "data" / "isbi2012"
    return default if default.is_dir() else None


needs_isbi = pytest.mark.skipif(isbi_path() is None, reason="ISBI 2012 data not found "
                                "(set MINUNET_ISBI2012 or put it in ../shared/data/isbi2012)")


# ----------------------------------------------------------------------------- pixel-wise


def test_pixel_accuracy_iou_dice_by_hand():
    pred = np.array([[0, 1], [1, 1]])
    truth = np.array([[0, 0], [1, 1]])
    # class 0: |P & T| = 1, |P| = 1, |T| = 2, union 2; class 1: |P & T| = 2, |P| = 3, |T| = 2
    assert M.pixel_accuracy(pred, truth) == 0.75
    np.testing.assert_allclose(M.iou(pred, truth, 2), [1 / 2, 2 / 3])
    assert M.mean_iou(pred, truth, 2) == pytest.approx(7 / 12)
    np.testing.assert_allclose(M.dice(pred, truth, 2), [2 / 3, 4 / 5])
    np.testing.assert_array_equal(M.confusion_matrix(pred, truth, 2), [[1, 1], [0, 2]])
    # a class in neither prediction nor truth is NaN and does not enter the mean
    v = M.iou(pred, truth, 3)
    assert math.isnan(v[2]) and M.mean_iou(pred, truth, 3) == pytest.approx(7 / 12)
    with pytest.raises(ValueError, match="outside 0..1"):
        M.confusion_matrix(pred + 1, truth, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        M.pixel_accuracy(pred, truth[:1])


# ----------------------------------------------------------------------------- Rand and info


def test_rand_and_info_of_a_merge_by_hand():
    truth = np.array([[1, 1, 2, 2, 3, 3]])
    pred = np.array([[1, 1, 1, 1, 2, 2]])  # cells 1 and 2 merged
    # n_ij: (1,1)=2, (2,1)=2, (3,2)=2: A = 12; T = 4+4+4 = 12; S = 16+4 = 20
    r = M.rand_scores(truth, pred)
    assert r == pytest.approx((1.0, 12 / 20, 2 * 12 / 32))  # split, merge, F = 0.75
    # H(T) = log 3, H(S,T) = log 3, H(S) = (2/3) log(3/2) + (1/3) log 3 = log 3 - (2/3) log 2
    h_s = math.log(3) - 2 / 3 * math.log(2)
    mutual = h_s  # = H(S) + H(T) - H(S,T)
    info = M.info_scores(truth, pred)
    assert info == pytest.approx((1.0, mutual / math.log(3), 2 * mutual / (h_s + math.log(3))))
    assert info.fscore == pytest.approx(0.7336804366512)


def test_rand_and_info_with_boundary_singletons_by_hand():
    truth = np.array([[1, 1, 2, 2]])
    pred = np.array([[1, 0, 2, 2]])  # a predicted boundary pixel inside true cell 1
    # n_ij: (1,1)=1, (2,2)=2, n0 = 1 singleton: A = 1+4+1 = 6, T = 4+4 = 8, S = 1+4+1 = 6
    assert M.rand_scores(truth, pred) == pytest.approx((6 / 8, 1.0, 12 / 14))
    # n = 4: H(T) = log 2; H(S) = (1/4) log 4 + (2/4) log 2 + (1/4) log 4 (singleton) = 1.5 log 2
    # H(S,T) = 1.5 log 2 as well, so I = log 2: split 2/3, merge 1, F = 2 / 2.5
    assert M.info_scores(truth, pred) == pytest.approx((2 / 3, 1.0, 0.8))
    # a wall splitting one cell in two halves with a singleton between them: Rand 6/11
    r = M.rand_scores(np.array([[1, 1, 1, 1]]), np.array([[1, 0, 2, 2]]))
    assert r == pytest.approx((6 / 16, 1.0, 6 / 11))  # A = 1+4+1, T = 16, S = 1+4+1


def test_only_truth_cells_count():
    truth = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 1, 1]])  # merges 1 and 2 across the true boundary pixel
    assert M.rand_scores(truth, pred) == pytest.approx((1.0, 8 / 16, 16 / 24))
    # the truth boundary pixel itself changes nothing
    assert M.rand_scores(truth, np.array([[1, 1, 7, 2, 2]])) == (1.0, 1.0, 1.0)
    assert M.rand_scores(np.zeros((2, 2), int), np.ones((2, 2), int)) == (1.0, 1.0, 1.0)


def test_perfect_and_relabelled_segmentations_score_one():
    truth = np.array([[1, 1, 0, 2], [3, 0, 2, 2]])
    for pred in (truth, np.array([[5, 5, 0, 9], [4, 0, 9, 9]])):
        assert M.rand_scores(truth, pred) == (1.0, 1.0, 1.0)
        assert M.info_scores(truth, pred) == pytest.approx((1.0, 1.0, 1.0))
    one = np.ones((3, 3), int)
    assert M.info_scores(one, one) == (1.0, 1.0, 1.0)  # H(S) = H(T) = 0


# ----------------------------------------------------------------------------- thinning


def test_thinning_floods_the_binary_boundary_from_the_cells():
    mask = np.array([[1, 0, 0, 0, 1]], bool)
    # breadth-first from both cells: the middle pixel is reached by both and becomes the dam
    np.testing.assert_array_equal(M.thin_boundaries(mask), [[1, 1, 0, 2, 2]])
    # an even wall: both fronts start together, x = 1 is popped first (Fiji's column order)
    # and joins the left cell, x = 2 then sees both cells and becomes the dam
    np.testing.assert_array_equal(M.thin_boundaries(np.array([[1, 0, 0, 1]], bool)),
                                  [[1, 1, 0, 2]])
    # a 2-pixel wall becomes a 1-pixel wall, on its right column, the whole way down
    wall = np.ones((6, 8), bool)
    wall[:, 3:5] = False
    thin = M.thin_boundaries(wall)
    assert (thin[:, :4] == 1).all() and (thin[:, 4] == 0).all() and (thin[:, 5:] == 2).all()
    # boundary that separates nothing (a blob inside a cell) joins the cell: no dam at all
    blob = np.ones((7, 7), bool)
    blob[2:5, 1:6] = False
    assert (M.thin_boundaries(blob) == 1).all()
    # no cell pixel: the whole image is one basin (Fiji); all cell: the components as they are
    assert (M.thin_boundaries(np.zeros((3, 4), bool)) == 1).all()
    assert (M.thin_boundaries(np.ones((3, 4), bool)) == 1).all()


def vincent_soille(cell):
    """Plain-Python watershed of the binary boundary image, for the test only.

    Vincent & Soille's flooding (1991) written out as Fiji's WatershedTransform2D runs it on
    the challenge's binary proposal (cell = level 0, boundary = level 255, 4-connectivity):
    pixels in column-major order, neighbours left, up, right, down, the global `flag` and
    all. metrics._flood states the same rules more simply; this checks that they agree.
    """
    H, W = cell.shape
    init, mask_, wshed, inqueue = -1, -2, 0, -3
    lab = np.full((H, W), init)
    order = [(y, x) for x in range(W) for y in range(H)]

    def neighbours(y, x):
        return [(v, u) for v, u in ((y, x - 1), (y - 1, x), (y, x + 1), (y + 1, x))
                if 0 <= v < H and 0 <= u < W]

    current, flag = 0, False
    for level in (True, False):  # the cells (0) first, then the boundary (255)
        pixels = [p for p in order if cell[p] == level]
        fifo = deque()
        for p in pixels:
            lab[p] = mask_
            if any(lab[n] >= wshed for n in neighbours(*p)):
                lab[p] = inqueue
                fifo.append(p)
        while fifo:
            p = fifo.popleft()
            for n in neighbours(*p):
                if lab[n] > 0:
                    if lab[p] == inqueue or (lab[p] == wshed and flag):
                        lab[p] = lab[n]
                    elif lab[p] > 0 and lab[p] != lab[n]:
                        lab[p], flag = wshed, False
                elif lab[n] == wshed:
                    if lab[p] == inqueue:
                        lab[p], flag = wshed, True
                elif lab[n] == mask_:
                    lab[n] = inqueue
                    fifo.append(n)
        for p in pixels:  # new minima at this level: the pixels no basin reached
            if lab[p] == mask_:
                current += 1
                lab[p] = current
                fifo.append(p)
                while fifo:
                    for n in neighbours(*fifo.popleft()):
                        if lab[n] == mask_:
                            lab[n] = current
                            fifo.append(n)
    return np.where(lab == init, 0, lab)


def canonical(labels):
    """Relabel 1, 2, ... in raster order of first appearance (0 stays 0)."""
    ids = {0: 0}
    for v in labels.ravel().tolist():
        ids.setdefault(v, len(ids))
    return np.vectorize(ids.get)(labels)


@pytest.mark.parametrize("seed", range(8))
def test_watershed_matches_vincent_soille_and_separates(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(3, 25)), int(rng.integers(3, 25)))
    prob = ndimage.uniform_filter(rng.random(shape), 3)
    mask = prob > np.quantile(prob, rng.uniform(0.2, 0.8))
    got = M.thin_boundaries(mask)
    np.testing.assert_array_equal(canonical(got), canonical(vincent_soille(mask)))
    seeds = M.segments(mask)
    assert (got[mask] == seeds[mask]).all()  # the cells keep their labels
    assert got.min() >= 0  # every boundary pixel decided: a basin or a dam
    for a, b in ((got[1:], got[:-1]), (got[:, 1:], got[:, :-1])):  # no two segments touch
        assert not ((a > 0) & (b > 0) & (a != b)).any()


def test_thinning_uses_the_binary_image_not_the_probabilities():
    truth = np.ones((9, 12), bool)
    truth[:, 4:8] = False  # a 4-pixel wall
    flat = np.where(truth, 0.9, 0.2)
    ridge = flat.copy()
    ridge[:, 4:8] = [0.1, 0.2, 0.3, 0.45]  # the most membrane-like column is the left one
    for th in ((0.5,), M.THRESHOLDS):
        a, b = M.isbi_scores(flat, truth, th), M.isbi_scores(ridge, truth, th)
        assert (a.v_rand, a.v_info) == (b.v_rand, b.v_info) == (1.0, 1.0)


# ----------------------------------------------------------------------------- ISBI scores


def two_cells(h=24, w=25):
    """Truth: two cells left and right of a 2-pixel vertical wall (columns 11, 12)."""
    truth = np.ones((h, w), bool)
    truth[:, 11:13] = False
    return truth


def test_perfect_prediction_scores_one():
    truth = two_cells()
    truth[5:9, 3:6] = False  # a thick blob of 'membrane' inside the left cell
    for prob in (truth.astype(float), np.where(truth, 0.8, 0.3)):
        r = M.isbi_scores(prob, truth)
        assert (r.pixel_error, r.rand_error, r.v_rand, r.v_info) == (0.0, 0.0, 1.0, 1.0)
        assert M.rand_error(prob, truth) == 0.0 and M.pixel_error(prob, truth) == 0.0
    assert M.rand_error(truth.astype(float), truth * 255) == 0.0  # 255 = cell accepted


def test_a_gap_merges_and_a_wall_splits():
    truth = two_cells()
    gap = truth.astype(float)
    gap[8, 11:13] = 1.0  # a one-pixel gap through the wall joins the two cells
    split = truth.astype(float)
    split[12, :11] = 0.0  # a wall across the left cell splits it
    perfect = M.isbi_scores(truth.astype(float), truth)
    g, s = M.isbi_scores(gap, truth), M.isbi_scores(split, truth)
    for r in (g, s):
        assert r.rand_error > perfect.rand_error == 0.0
        assert r.v_rand < perfect.v_rand == 1.0 and r.v_info < 1.0
    # the merge hurts the merge score only, the split the split score only (after thinning
    # the proposal; the truth's components as they are)
    t_seg = M.segments(truth)
    gm = M.rand_scores(t_seg, M.thin_boundaries(gap > 0.5))
    sp = M.rand_scores(t_seg, M.thin_boundaries(split > 0.5))
    assert gm.split == pytest.approx(1.0) and gm.merge < 1.0
    assert sp.merge == pytest.approx(1.0) and sp.split < 1.0
    gi = M.info_scores(t_seg, M.thin_boundaries(gap > 0.5))
    si = M.info_scores(t_seg, M.thin_boundaries(split > 0.5))
    assert gi.split == pytest.approx(1.0) and gi.merge < 1.0
    assert si.merge == pytest.approx(1.0) and si.split < 1.0
    # and the Rand error without thinning, by hand: the gap merges 11*24 + 12*24 = 264 + 288
    # cell pixels plus the 2 gap pixels (not truth cells): A = T = 264^2 + 288^2,
    # S = (264 + 288)^2, F = 2A / (T + S)
    a = 264**2 + 288**2
    assert g.rand_error == pytest.approx(1 - 2 * a / (a + (264 + 288) ** 2))


def thick_wall(width, h=10, left=4, right=4):
    """Truth: two cells either side of a vertical membrane `width` pixels wide."""
    truth = np.ones((h, left + width + right), bool)
    truth[:, left:left + width] = False
    return truth


def test_the_truth_is_not_thinned():
    # the proposal equal to the truth scores 1, however thick the truth's membrane
    for width in (1, 2, 5, 8):
        truth = thick_wall(width)
        r = M.isbi_scores(truth.astype(float), truth)
        assert (r.v_rand, r.v_info) == (1.0, 1.0), width
    # a 5-pixel membrane in the truth, a 1-pixel line in the proposal: along its middle, along
    # its edge, or wandering inside it, the truth's cells are never split or merged: 1
    truth = thick_wall(5)
    for cols in ([6] * 10, [4] * 10, [8] * 10, [4, 5, 6, 7, 8, 8, 7, 6, 5, 4]):
        prob = np.ones(truth.shape)
        prob[np.arange(10), cols] = 0.0
        r = M.isbi_scores(prob, truth)
        assert (r.v_rand, r.v_info) == (1.0, 1.0), cols
        assert r.rand_error == 0.0  # no thinning there, and the truth's membrane never counts


def test_truth_membrane_pixels_do_not_count_by_hand():
    # truth [1 1 0 0 0 2]: a 3-pixel membrane; the proposal merges everything into one segment.
    # Only the 3 truth cell pixels count: n_ij = (1,1): 2, (2,1): 1, so A = 4 + 1 = 5,
    # T = 4 + 1 = 5, S = 3^2 = 9: V_rand = 2 * 5 / 14 = 5/7. (Thinning the truth first would
    # have made it [1 1 1 0 2 2] and V_rand 13/19.) H(S) = 0, so V_info = 0 (as Fiji).
    truth = np.array([[1, 1, 0, 0, 0, 1]], bool)
    r = M.isbi_scores(np.ones(truth.shape), truth)
    assert r.v_rand == pytest.approx(5 / 7) and r.v_info == 0.0
    # the merge cannot be undone by any threshold: at t = 1.0 the whole image is boundary,
    # one basin again (Fiji), not six singletons
    assert r.thresholds["v_rand"] == 0.0
    c = M.slice_counts(np.ones(truth.shape), truth, thresholds=(1.0,))
    assert c.v_rand[0].fscore == pytest.approx(5 / 7)


def test_best_threshold_is_taken():
    truth = two_cells()
    prob = np.where(truth, 0.35, 0.05)  # right only for thresholds 0.1 .. 0.3
    r = M.isbi_scores(prob, truth)
    assert (r.pixel_error, r.rand_error, r.v_rand, r.v_info) == (0.0, 0.0, 1.0, 1.0)
    assert r.thresholds["pixel_error"] == 0.1
    assert M.rand_error(prob, truth, thresholds=(0.5,)) > 0  # at 0.5 every pixel is boundary


def test_stack_pools_pixel_and_rand_counts_and_averages_v():
    a_truth = np.zeros((4, 4), bool)
    a_truth[:2] = True  # 8 cell pixels, predicted perfectly: tp = 8
    b_truth = np.ones((4, 4), bool)
    b_prob = np.ones((4, 4))
    b_prob[1:3, 1:3] = 0  # 4 of 16 cell pixels missed: tp = 12, fn = 4
    probs = np.stack([a_truth.astype(float), b_prob])
    truths = np.stack([a_truth, b_truth])
    r = M.isbi_scores(probs, truths)
    # pooled: tp = 20, fp = 0, fn = 4: F = 40/44 -> error 1/11 (the mean of the slices' errors
    # would be (0 + 1/7) / 2 = 1/14)
    assert r.pixel_error == pytest.approx(1 / 11)
    assert M.pixel_error(b_prob, b_truth) == pytest.approx(1 / 7)
    # Rand, pooled: slice a: A = T = S = 64; slice b: one true segment of 16; the prediction is
    # one ring of 12 plus 4 singletons: A = 144 + 4, T = 256, S = 144 + 4
    assert r.rand_error == pytest.approx(1 - 2 * (64 + 148) / ((64 + 256) + (64 + 148)))
    # V: per threshold the mean of the slices (binary maps: thresholds 0.0 .. 0.9 agree)
    va, vb = M.isbi_scores(probs[:1], truths[:1]), M.isbi_scores(probs[1:], truths[1:])
    assert r.v_rand == pytest.approx((va.v_rand + vb.v_rand) / 2)
    assert r.v_info == pytest.approx((va.v_info + vb.v_info) / 2)


def test_bad_inputs():
    truth = two_cells()
    with pytest.raises(ValueError, match="binary"):
        M.rand_error(truth.astype(float), truth.astype(int) * 2 + 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.rand_error(truth * 255.0, truth)
    with pytest.raises(ValueError, match="one shape"):
        M.isbi_scores(np.zeros((3, 4)), np.zeros((4, 3), bool))


@needs_isbi
def test_isbi_slice_against_itself_and_degraded():
    from minunet.data.loaders import read_array

    label = read_array(isbi_path() / "labels" / "00.png")[:256, :256]
    truth = label == 255
    r = M.isbi_scores(label / 255.0, truth)
    assert (r.pixel_error, r.rand_error, r.v_rand, r.v_info) == (0.0, 0.0, 1.0, 1.0)
    # thinner membranes (cells dilated by one pixel) open gaps: every score gets worse
    worse = M.isbi_scores(ndimage.binary_dilation(truth).astype(float), truth)
    assert worse.pixel_error > 0 and worse.rand_error > 0
    assert worse.v_rand < 1 and worse.v_info < 1


def test_float32_rounding_above_one_is_accepted():
    truth = two_cells()
    prob = np.where(truth, np.float32(1.0000001), np.float32(0.0))  # a float32 softmax can do this
    assert M.rand_error(prob, truth) == 0.0


# the issue-11 table: slice 25's labels blurred (and noised), V_rand and V_info as the
# challenge's Fiji code computes them (up to where watershed ties put dam pixels)
CHALLENGE_SLICE_25 = [(1, 0.0, 0.9997, 0.9994), (2, 0.15, 0.9924, 0.9808),
                      (3, 0.3, 0.9568, 0.9318)]


@needs_isbi
@pytest.mark.parametrize("sigma, noise, want_rand, want_info", CHALLENGE_SLICE_25)
def test_real_isbi_slice_matches_the_challenge(sigma, noise, want_rand, want_info):
    from minunet.data.loaders import read_array

    label = read_array(isbi_path() / "labels" / "25.png")
    truth = label > 0
    prob = ndimage.gaussian_filter(truth.astype(float), sigma)
    prob = np.clip(prob + noise * np.random.default_rng(0).standard_normal(prob.shape), 0, 1)
    r = M.isbi_scores(prob, truth)
    assert r.v_rand == pytest.approx(want_rand, abs=2e-3)
    assert r.v_info == pytest.approx(want_info, abs=2e-3)
