"""Metrics (minunet/metrics.py) on tiny hand-made segmentations with hand-computed values.

Notation as in the module doc: A = sum n_ij^2 + n0, T = sum t_i^2, S = sum s_j^2 + n0 (Rand);
H(T), H(S), H(S,T), I (information). Segment ids below are written out pixel by pixel.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from minunet import metrics as M

ISBI = Path("/work/shared/data/isbi2012")


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


def test_thinning_puts_the_line_in_the_middle_or_on_the_ridge():
    mask = np.array([[1, 0, 0, 0, 1]], bool)
    # flat boundary: breadth-first from both seeds, the middle pixel is reached by both
    np.testing.assert_array_equal(M.thin_boundaries(mask), [[1, 1, 0, 2, 2]])
    # membrane probability 0.9, 0.5, 0.1: flooding starts at the low end, the line lands on
    # the most membrane-like pixel
    membrane = np.array([[0.0, 0.9, 0.5, 0.1, 0.0]])
    np.testing.assert_array_equal(M.thin_boundaries(mask, membrane), [[1, 0, 2, 2, 2]])
    # a 2-pixel wall becomes a 1-pixel wall
    wall = np.ones((6, 8), bool)
    wall[:, 3:5] = False
    thin = M.thin_boundaries(wall)
    assert (thin == 0).sum() == 6 and set(np.unique(thin)) == {0, 1, 2}
    assert (thin[:, :3] == 1).all() and (thin[:, 5:] == 2).all()
    assert M.thin_boundaries(np.zeros((3, 4), bool)).max() == 0  # no seeds: all boundary


def reference_flood(mask, membrane):
    """Plain-Python twin of metrics._flood (heapq; same queue order), for the test only."""
    labels = ndimage.label(mask, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])[0]
    H, W = labels.shape
    queued = labels > 0
    heap, counter = [], 0

    def neighbours(y, x):
        return [(v, u) for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
                if 0 <= v < H and 0 <= u < W]

    for y in range(H):
        for x in range(W):
            if not queued[y, x] and any(labels[n] > 0 for n in neighbours(y, x)):
                queued[y, x] = True
                heapq.heappush(heap, (membrane[y, x], counter, y, x))
                counter += 1
    while heap:
        _, _, y, x = heapq.heappop(heap)
        found = {int(labels[n]) for n in neighbours(y, x) if labels[n] > 0}
        if len(found) != 1:
            labels[y, x] = 0
            continue
        labels[y, x] = found.pop()
        for n in neighbours(y, x):
            if not queued[n]:
                queued[n] = True
                heapq.heappush(heap, (membrane[n], counter, *n))
                counter += 1
    return labels


@pytest.mark.parametrize("seed", range(6))
def test_watershed_matches_reference_and_separates(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(5, 25)), int(rng.integers(5, 25)))
    prob = ndimage.uniform_filter(rng.random(shape), 3)
    mask = prob > np.quantile(prob, 0.45)
    membrane = np.round(1 - prob, 1) if seed % 2 else 1 - prob  # ties (rounded) and no ties
    got = M.thin_boundaries(mask, membrane)
    np.testing.assert_array_equal(got, reference_flood(mask, membrane))
    seeds = M.segments(mask)
    assert (got[mask] == seeds[mask]).all()  # seeds keep their labels
    # no two different segments touch (4-neighbours) ...
    for a, b in ((got[1:], got[:-1]), (got[:, 1:], got[:, :-1])):
        assert not ((a > 0) & (b > 0) & (a != b)).any()
    # ... and every boundary pixel next to a segment is needed: it touches two of them
    padded = np.pad(got, 1)
    for y, x in zip(*np.nonzero(got == 0), strict=True):
        near = {padded[y, x + 1], padded[y + 2, x + 1], padded[y + 1, x], padded[y + 1, x + 2]}
        near.discard(0)
        assert len(near) != 1, (y, x, near)


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
    # the merge hurts the merge score only, the split the split score only (after thinning)
    t_thin = M.thin_boundaries(truth)
    gm = M.rand_scores(t_thin, M.thin_boundaries(gap > 0.5, 1 - gap))
    sp = M.rand_scores(t_thin, M.thin_boundaries(split > 0.5, 1 - split))
    assert gm.split == pytest.approx(1.0) and gm.merge < 1.0
    assert sp.merge == pytest.approx(1.0) and sp.split < 1.0
    gi = M.info_scores(t_thin, M.thin_boundaries(gap > 0.5, 1 - gap))
    si = M.info_scores(t_thin, M.thin_boundaries(split > 0.5, 1 - split))
    assert gi.split == pytest.approx(1.0) and gi.merge < 1.0
    assert si.merge == pytest.approx(1.0) and si.split < 1.0
    # and the Rand error without thinning, by hand: the gap merges 11*24 + 12*24 = 264 + 288
    # cell pixels plus the 2 gap pixels (not truth cells): A = T = 264^2 + 288^2,
    # S = (264 + 288)^2, F = 2A / (T + S)
    a = 264**2 + 288**2
    assert g.rand_error == pytest.approx(1 - 2 * a / (a + (264 + 288) ** 2))


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


def test_isbi_slice_against_itself_and_degraded():
    path = ISBI / "labels" / "00.png"
    if not path.exists():
        pytest.skip(f"ISBI 2012 data not at {ISBI}")
    from minunet.data.loaders import read_array

    label = read_array(path)[:256, :256]
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
