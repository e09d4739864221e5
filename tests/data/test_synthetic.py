"""The synthetic generators: conventions, determinism, and the features the net must learn."""

import numpy as np
import pytest
from scipy import ndimage

from minunet.data.synthetic import synthetic_dataset, synthetic_em, touching_cells
from minunet.data.weightmap import instances_to_mask


@pytest.fixture(scope="module")
def sample():
    return synthetic_em((192, 256), seed=3)


def test_isbi_conventions(sample):
    assert sample.image.shape == sample.label.shape == sample.instances.shape == (192, 256)
    assert sample.image.dtype == np.uint8 and sample.label.dtype == np.uint8
    assert set(np.unique(sample.label).tolist()) == {0, 255}
    # instances: 0 exactly on membrane, ids consecutive from 1
    assert np.array_equal(sample.instances == 0, sample.label == 0)
    ids = np.unique(sample.instances)
    assert np.array_equal(ids, np.arange(ids.size))
    assert ids.size > 10


def test_deterministic_by_seed():
    a, b, c = synthetic_em(96, seed=7), synthetic_em(96, seed=7), synthetic_em(96, seed=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)


def test_membranes_dark_cells_bright_with_dark_organelles_inside(sample):
    img, cell = sample.image.astype(float), sample.label == 255
    membrane_median = np.median(img[~cell])
    assert img[cell].mean() - img[~cell].mean() > 30
    # dark pixels well inside cells (organelles, labelled as cell): "dark" alone is not membrane
    inner = ndimage.distance_transform_edt(cell) > 3
    assert np.count_nonzero(inner & (img < membrane_median)) > 50


def test_membrane_thickness_varies(sample):
    # on the membrane's centre line (ridge of the distance to the cells), the distance is about
    # half the membrane's width: thin and thick membranes must both be common
    half = ndimage.distance_transform_edt(sample.label == 0)
    ridge = (half > 0) & (half == ndimage.maximum_filter(half, size=3))
    p10, p90 = np.percentile(half[ridge], [10, 90])
    assert p10 <= 2.0 and p90 >= 4.0  # widths from ~3 px to ~8 px


def test_dataset_stack_matches_single_slices():
    stack = synthetic_dataset(3, (64, 80), seed=1)
    assert stack.images.shape == stack.labels.shape == stack.instances.shape == (3, 64, 80)
    assert np.array_equal(stack.images[2], synthetic_em((64, 80), seed=(1, 2)).image)
    assert not np.array_equal(stack.images[0], stack.images[1])


def test_too_small_size_is_rejected():
    with pytest.raises(ValueError, match="at least 8x8"):
        synthetic_em((4, 100))


def test_touching_cells_borders_separate_touching_instances():
    t = touching_cells(128, seed=2)
    assert t.image.dtype == np.uint8 and t.mask.dtype == np.uint8
    assert t.borders.any()
    # touching: some pair of different cells are 4-neighbours
    a, b = t.instances[:, 1:], t.instances[:, :-1]
    assert np.any((a > 0) & (b > 0) & (a != b))
    assert not t.mask[t.borders].any()
    assert np.array_equal(t.mask > 0, instances_to_mask(t.instances) == 1)
    # with the borders removed, every connected component of the mask lies in a single cell
    comps, n = ndimage.label(t.mask > 0, structure=ndimage.generate_binary_structure(2, 1))
    for c in range(1, n + 1):
        assert np.unique(t.instances[comps == c]).size == 1
