"""Elastic deformation and the other augmentations: one coordinate map, applied consistently."""

import numpy as np
import pytest
from scipy import ndimage

from minunet.data.augment import (
    AugmentConfig,
    Transform,
    augment_sample,
    coordinate_map,
    cubic_spline_matrix,
    draw_transform,
    elastic_displacement,
    gray_value,
    mirror_index,
    mirror_pad,
    spline_coefficients,
    warp,
)


def identity(coarse=None):
    return Transform(np.zeros((2, 3, 3)) if coarse is None else coarse, 0.0, False, False,
                     1.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.random((48, 56)), 1.5).astype(np.float32)


def test_bicubic_upsampling_equals_scipy_zoom_order_3():
    c = np.random.default_rng(1).normal(size=(3, 3))
    m = cubic_spline_matrix(3, np.linspace(0, 2, 101))
    zoom = ndimage.zoom(c, 101 / 3, order=3, grid_mode=False, mode="mirror")
    np.testing.assert_allclose(m @ c @ m.T, zoom, atol=1e-12)


def test_zero_displacement_is_identity(image):
    h, w = image.shape
    coords = coordinate_map((h, w), ((h - 1) / 2, (w - 1) / 2), identity())
    np.testing.assert_array_equal(coords, np.mgrid[0:h, 0:w])
    # the cubic path (not the exact gather) reproduces the image at whole-pixel positions
    np.testing.assert_allclose(warp(image, coords, 3), image, atol=1e-6)
    np.testing.assert_allclose(warp(image, coords, 1), image, atol=1e-6)
    out, lab, _ = augment_sample(image, (image > 0.5).astype(np.int64), None,
                                 np.random.default_rng(0), AugmentConfig(elastic_sigma=0.0,
                                 rotate=False, flip=False).only_geometry())
    np.testing.assert_allclose(out, image, atol=1e-6)
    np.testing.assert_array_equal(lab, image > 0.5)


def test_displacement_statistics_match_the_requested_sigma():
    rng = np.random.default_rng(2)
    cfg = AugmentConfig(elastic_sigma=10.0)
    draws = [draw_transform(rng, cfg).coarse for _ in range(3000)]  # 3000 x 18 node values
    coarse = np.stack(draws)
    assert abs(coarse.std() - 10.0) < 0.15  # 54000 samples: std error ~ 0.03
    assert abs(coarse.mean()) < 0.15
    # the dense field interpolates: at the grid nodes (corners, edge midpoints, centre) it is the
    # drawn value, and in between it is smooth and no wilder than the nodes
    field = elastic_displacement(draws[0], (65, 65))
    np.testing.assert_allclose(field[:, ::32, ::32], draws[0], atol=1e-12)
    assert np.abs(np.diff(field, axis=1)).max() < 0.5 * np.abs(draws[0]).max()


def test_elastic_moves_pixels_by_about_sigma():
    rng = np.random.default_rng(3)
    cfg = AugmentConfig(rotate=False, flip=False)
    base = np.mgrid[0:101, 0:101].astype(float)
    shifts = [coordinate_map((101, 101), (50, 50), draw_transform(rng, cfg)) - base
              for _ in range(200)]
    node = np.stack([s[:, 50, 50] for s in shifts])  # centre node: N(0, 10^2) per component
    assert 8.5 < node.std() < 11.5


def test_labels_stay_in_their_label_set(image):
    label = np.digitize(image, [0.4, 0.5, 0.6]).astype(np.int64) * 3  # values {0, 3, 6, 9}
    weights = np.where(label > 0, 2.0, 0.5).astype(np.float32)
    for seed in range(5):
        x, y, w = augment_sample(image, label, weights, np.random.default_rng(seed))
        assert set(np.unique(y)) <= set(np.unique(label))
        assert 0.5 - 1e-6 <= w.min() and w.max() <= 2.0 + 1e-6  # linear: no overshoot
        assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_flips_and_rotation_by_pi(image):
    h, w = image.shape
    c = ((h - 1) / 2, (w - 1) / 2)
    t = identity()._replace(flip_x=True)
    np.testing.assert_array_equal(warp(image, coordinate_map((h, w), c, t), 0), image[:, ::-1])
    t = identity()._replace(angle=np.pi)
    np.testing.assert_allclose(warp(image, coordinate_map((h, w), c, t), 3), image[::-1, ::-1],
                               atol=1e-5)


def test_image_labels_weights_share_one_map(image):
    # transforming a label built from the image equals thresholding the transformed image
    # wherever the image is not close to the threshold (cubic vs nearest differ only there)
    label = (image > 0.5).astype(np.int64)
    x, y, w = augment_sample(image, label, label.astype(np.float32), np.random.default_rng(5),
                             AugmentConfig().only_geometry())
    clear = np.abs(x - 0.5) > 0.05
    assert np.mean((x > 0.5)[clear] == (y == 1)[clear]) > 0.97
    assert np.mean(np.abs(w - y)[clear] < 0.5) > 0.97


def test_mirror_matches_numpy_reflect_pad(image):
    padded = mirror_pad(image, 70)  # wider than the image: mirrored more than once
    h, w = image.shape
    iy = mirror_index(np.arange(-70, h + 70), h)
    ix = mirror_index(np.arange(-70, w + 70), w)
    np.testing.assert_array_equal(padded, image[np.ix_(iy, ix)])


def test_prefiltered_coefficients_give_the_same_samples(image):
    coords = coordinate_map((40, 40), (10.3, 50.7), draw_transform(np.random.default_rng(6),
                                                                     AugmentConfig()))
    a = warp(image, coords, 3)
    b = warp(spline_coefficients(image), coords, 3, prefiltered=True)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_gray_value_changes_stay_in_range():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    t = identity()._replace(gamma=0.8, contrast=1.25, brightness=0.1)
    y = gray_value(x, t)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    assert np.all(np.diff(y) >= 0)  # monotone: the order of gray values is kept
    assert gray_value(x, identity()) is x
