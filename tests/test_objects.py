"""Object scores (minunet/evaluation/objects.py) on hand-made label images whose values are
worked out here.

Every object is a rectangle, so its area and every overlap are counted by eye:
    T = true objects, P = predicted objects, IoU = |T & P| / |T | P|.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet.evaluation.objects import (
    IOU_THRESHOLDS,
    as_instances,
    match,
    object_counts,
    object_scores,
    overlaps,
)


def canvas():
    return np.zeros((10, 30), np.int32)


def scores(truth, pred):
    return object_scores(object_counts(truth, pred))


def test_thresholds_are_half_to_095_in_steps_of_005():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_perfect_segmentation_scores_one_whatever_the_ids():
    t, p = canvas(), canvas()
    t[0:4, 0:4], t[5:9, 10:20] = 1, 2
    p[0:4, 0:4], p[5:9, 10:20] = 70, 3  # other ids, same objects
    s = scores(t, p)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    for k in ("precision", "recall", "f1", "mean_matched_iou", "ap_50", "ap_75", "ap", "seg"):
        assert s[k] == 1.0, k


def test_one_split():
    # T (4 x 8 = 32 px) cut into P1 (4 x 5 = 20 px) and P2 (4 x 3 = 12 px):
    # IoU(T, P1) = 20/32 = 0.625 -> matched at 0.5, 0.55, 0.6; IoU(T, P2) = 12/32 = 0.375.
    t, p = canvas(), canvas()
    t[0:4, 6:14] = 1
    p[0:4, 6:11], p[0:4, 11:14] = 1, 2
    s = scores(t, p)
    assert (s["n_true"], s["n_pred"], s["tp"], s["fp"], s["fn"]) == (1, 2, 1, 1, 0)
    assert s["precision"] == 0.5 and s["recall"] == 1.0
    assert s["f1"] == pytest.approx(2 / 3)  # 2 TP / (2 TP + FP + FN) = 2/3
    assert s["mean_matched_iou"] == 0.625
    # AP(t) = TP / (TP + FP + FN): 1/2 at 0.5, 0.55, 0.6; 0 from 0.65 on
    assert s["ap_50"] == 0.5 and s["ap_75"] == 0.0
    assert s["ap"] == pytest.approx(3 * 0.5 / 10)
    # SEG: P1 covers 20 > 0.5 * 32 of T, so T scores its Jaccard index 0.625
    assert s["seg"] == 0.625


def test_one_merge():
    # T1, T2 (4 x 4 = 16 px each, touching) found as one P (4 x 8 = 32 px):
    # IoU(T1, P) = IoU(T2, P) = 16/32 = 0.5: only one of them can be matched, at t = 0.5 only.
    t, p = canvas(), canvas()
    t[6:10, 0:4], t[6:10, 4:8] = 1, 2
    p[6:10, 0:8] = 1
    s = scores(t, p)
    assert (s["n_true"], s["n_pred"], s["tp"], s["fp"], s["fn"]) == (2, 1, 1, 0, 1)
    assert s["precision"] == 1.0 and s["recall"] == 0.5
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["mean_matched_iou"] == 0.5
    assert s["ap_50"] == 0.5 and s["ap"] == pytest.approx(0.05)  # 1/2 at 0.5 only
    # SEG: P covers all 16 px of each T (16 > 8), so each scores its Jaccard index 16/32
    assert s["seg"] == 0.5


def test_one_missed_cell():
    t, p = canvas(), canvas()
    t[0:4, 0:4], t[6:10, 10:14] = 1, 2
    p[0:4, 0:4] = 1
    s = scores(t, p)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)
    assert s["precision"] == 1.0 and s["recall"] == 0.5 and s["f1"] == pytest.approx(2 / 3)
    assert s["mean_matched_iou"] == 1.0
    assert s["ap"] == 0.5  # 1 / (1 + 0 + 1) at every threshold
    assert s["seg"] == 0.5  # (1 + 0) / 2: a missed cell scores 0


def test_one_false_cell():
    t, p = canvas(), canvas()
    t[0:4, 0:4] = 1
    p[0:4, 0:4], p[6:10, 20:24] = 1, 2
    s = scores(t, p)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)
    assert s["precision"] == 0.5 and s["recall"] == 1.0 and s["f1"] == pytest.approx(2 / 3)
    assert s["ap"] == 0.5
    assert s["seg"] == 1.0  # SEG does not see false positives


def test_all_four_in_one_image():
    # T1 found exactly; T2 split (P2 0.625, P3); T3 + T4 merged into P4 (0.5 each);
    # T5 missed; P5 false. 5 true, 5 predicted objects.
    t, p = canvas(), canvas()
    t[0:4, 0:4], p[0:4, 0:4] = 1, 1
    t[0:4, 6:14] = 2
    p[0:4, 6:11], p[0:4, 11:14] = 2, 3
    t[6:10, 0:4], t[6:10, 4:8] = 3, 4
    p[6:10, 0:8] = 4
    t[6:10, 10:14] = 5
    p[6:10, 20:24] = 5
    s = scores(t, p)
    # at IoU 0.5: T1-P1 (1.0), T2-P2 (0.625), T3 or T4 with P4 (0.5)
    assert (s["n_true"], s["n_pred"], s["tp"], s["fp"], s["fn"]) == (5, 5, 3, 2, 2)
    assert s["precision"] == 0.6 and s["recall"] == 0.6 and s["f1"] == pytest.approx(0.6)
    assert s["mean_matched_iou"] == pytest.approx((1 + 0.625 + 0.5) / 3)
    # TP per threshold: 3 at 0.5; 2 at 0.55, 0.6; 1 from 0.65 to 0.95 (7 thresholds).
    # AP(t) = TP / (TP + FP + FN) = TP / (10 - TP)
    assert s["ap_50"] == pytest.approx(3 / 7)
    assert s["ap_75"] == pytest.approx(1 / 9)
    assert s["ap"] == pytest.approx((3 / 7 + 2 * 2 / 8 + 7 * 1 / 9) / 10)
    # SEG: T1 1, T2 0.625, T3 0.5, T4 0.5, T5 0
    assert s["seg"] == pytest.approx((1 + 0.625 + 0.5 + 0.5 + 0) / 5)


def test_seg_needs_more_than_half_of_the_reference():
    # P covers exactly half of T (8 of 16 px): no match for SEG (> 0.5 |R| is strict)
    t, p = canvas(), canvas()
    t[0:4, 0:4] = 1
    p[0:4, 0:2] = 1
    assert scores(t, p)["seg"] == 0.0
    p[0, 2] = 1  # 9 of 16 px: matched, Jaccard 9 / 16
    assert scores(t, p)["seg"] == pytest.approx(9 / 16)


def test_images_pool_their_counts():
    # image 1: a split (1 TP, 1 FP); image 2: a missed cell next to a found one (1 TP, 1 FN)
    t1, p1 = canvas(), canvas()
    t1[0:4, 6:14] = 1
    p1[0:4, 6:11], p1[0:4, 11:14] = 1, 2
    t2, p2 = canvas(), canvas()
    t2[0:4, 0:4], t2[6:10, 10:14] = 1, 2
    p2[0:4, 0:4] = 1
    s = object_scores([object_counts(t1, p1), object_counts(t2, p2)])
    assert (s["n_true"], s["n_pred"], s["tp"], s["fp"], s["fn"]) == (3, 3, 2, 1, 1)
    assert s["f1"] == pytest.approx(4 / 6)
    assert s["mean_matched_iou"] == pytest.approx((0.625 + 1.0) / 2)
    assert s["seg"] == pytest.approx((0.625 + 1 + 0) / 3)  # over all 3 reference objects


def test_binary_masks_are_labelled_by_4_connected_components():
    m = np.zeros((5, 5), np.uint8)
    m[0:2, 0:2] = 255
    m[2, 2] = 255  # touches the square at a corner only: another object
    m[4, 0:5] = 255
    lab = as_instances(m)
    assert lab.max() == 3 and lab[0, 0] != lab[2, 2]
    ids = np.array([[0, 7], [7, 9]])
    np.testing.assert_array_equal(as_instances(ids), ids)  # label images stay as they are


def test_empty_images():
    z = canvas()
    s = scores(z, z)
    assert s["f1"] == 1.0 and s["precision"] == 1.0 and s["ap"] == 1.0
    assert math.isnan(s["seg"])  # no reference object: undefined
    t = canvas()
    t[0:3, 0:3] = 1
    s = scores(t, z)
    assert (s["precision"], s["recall"], s["f1"], s["ap"], s["seg"]) == (0, 0, 0, 0, 0)


def test_matching_is_maximum_not_greedy():
    # the greedy choice (0, 0) would leave row 1 unmatched; the maximum matching has two pairs
    iou = np.array([[0.9, 0.6], [0.6, 0.0]])
    rows, cols = match(iou, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (1, 0)]
    rows, cols = match(iou, 0.7)
    assert rows.tolist() == [0] and cols.tolist() == [0]


def test_overlaps_count_pixels():
    t, p = canvas(), canvas()
    t[0:2, 0:3] = 5  # 6 px
    p[0:2, 1:4] = 2  # 6 px, 4 of them in t
    ov = overlaps(t, p)
    assert ov.true_sizes.tolist() == [6] and ov.pred_sizes.tolist() == [6]
    assert ov.inter.tolist() == [[4]]
    with pytest.raises(ValueError, match="differ in shape"):
        overlaps(t, p[:, :5])
