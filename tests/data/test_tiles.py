"""Training tiles: sizes, mirrored context, determinism, the sampler and its prefetch thread."""

import numpy as np
import pytest

from minunet.data.augment import AugmentConfig, mirror_pad
from minunet.data.tiles import TileSampler, random_tile
from minunet.data.weightmap import weight_map


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    image = rng.random((80, 96)).astype(np.float32)
    label = (image > 0.3).astype(np.int64)
    return image, label, weight_map(label)


def test_tile_shapes_and_dtypes(data):
    x, y, w = random_tile(*data, 60, 20, np.random.default_rng(0), AugmentConfig())
    assert x.shape == (60, 60) and x.dtype == np.float32
    assert y.shape == w.shape == (20, 20)
    assert y.dtype == np.int64 and w.dtype == np.float32


def test_same_seed_same_tile(data):
    a = random_tile(*data, 60, 20, np.random.default_rng(4), AugmentConfig())
    b = random_tile(*data, 60, 20, np.random.default_rng(4), AugmentConfig())
    c = random_tile(*data, 60, 20, np.random.default_rng(5), AugmentConfig())
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_plain_crop_matches_labels_and_weights(data):
    image, label, weights = data
    x, y, w = random_tile(image, label, weights, 60, 20, np.random.default_rng(1), None)
    # find the crop: x's centre 20x20 is the label's window
    padded = mirror_pad(image, 20)
    hits = [(r, c) for r in range(80 - 19) for c in range(96 - 19)
            if np.array_equal(padded[r : r + 60, c : c + 60], x)]
    assert len(hits) == 1
    r, c = hits[0]
    np.testing.assert_array_equal(y, label[r : r + 20, c : c + 20])
    np.testing.assert_array_equal(w, weights[r : r + 20, c : c + 20])


def test_border_tiles_take_mirrored_context(data):
    image, label, weights = data
    out, ins = 20, 60
    c = (out - 1) / 2  # output window at the top-left corner of the image
    x, y, w = random_tile(image, label, weights, ins, out, np.random.default_rng(0), None,
                          center=(c, c))
    np.testing.assert_array_equal(x, mirror_pad(image, 20)[:ins, :ins])
    np.testing.assert_array_equal(y, label[:out, :out])
    np.testing.assert_array_equal(x[:20, 20:], image[20:0:-1, :40])  # reflected rows


def test_image_smaller_than_the_tile_is_mirrored_around(data):
    image, label, weights = (a[:12, :15] for a in data)
    x, y, _ = random_tile(image, label, weights, 60, 20, np.random.default_rng(0), AugmentConfig())
    assert x.shape == (60, 60) and y.shape == (20, 20)


def test_invalid_sizes_name_the_rule(data):
    with pytest.raises(ValueError, match="even difference"):
        random_tile(*data, 61, 20, np.random.default_rng(0))


def test_sampler_prefetch_gives_the_same_stream_and_resumes(data):
    samples = [data, tuple(np.flip(a, 0).copy() for a in data)]
    plain = TileSampler(samples, 60, 20, AugmentConfig(), seed=3)
    first = [next(plain) for _ in range(5)]
    with TileSampler(samples, 60, 20, AugmentConfig(), seed=3, prefetch=2) as fetched:
        for a, b in zip(first, (next(fetched) for _ in range(5)), strict=True):
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u, v)
    assert fetched._thread is None  # joined on exit
    resumed = TileSampler(samples, 60, 20, AugmentConfig(), seed=3, start=3)
    np.testing.assert_array_equal(next(resumed)[0], first[3][0])
    x, y, w = plain.batch(2)
    assert x.shape == (2, 1, 60, 60) and y.shape == w.shape == (2, 20, 20)
    assert plain.position == 7


def test_sampler_computes_paper_weight_maps(data):
    image, label, weights = data
    s = TileSampler([(image, label)], 60, 20, None, seed=0)
    _, y, w = next(s)
    assert w.max() > 1.0  # not all ones: the border term is there
    s1 = TileSampler([(image, label)], 60, 20, None, seed=0, use_weights=False)
    assert np.all(next(s1)[2] == 1.0)


def test_sampler_errors_reach_the_consumer(data):
    image, label, _ = data
    s = TileSampler([(image, label, np.ones((3, 3), np.float32))], 60, 20, None, prefetch=1)
    with pytest.raises(ValueError, match="same shape"):
        next(s)
    s.close()
