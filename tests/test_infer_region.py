"""Regions, owners, streaming and out-of-memory retries of overlap-tile inference
(minunet/inference/tiles.py: predict_region, axis_plan, _frame, the tile retry).

Exactness of the whole-image prediction against one forward pass is tests/test_infer.py's;
here any rectangle of the output, computed from a window of the image, must equal the
whole-image prediction BIT FOR BIT (it runs the same tiles on the same pixels), which is
what chunked prediction (minunet/inference/chunked.py) stands on.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from minunet.inference.tiles import (
    TileRetryWarning,
    _frame,
    _transform,
    axis_plan,
    predict,
    predict_region,
    region_window,
)
from minunet.models.sizes import ValidUNetGeometry, is_valid_size, output_size, tile_step
from minunet.models.unet import UNetConfig, build_model, standardize


@pytest.fixture(scope="module")
def model():
    return build_model(UNetConfig(base=2, dtype="float64"), seed=3).eval()


@pytest.mark.parametrize("tta", [1, 4, 8])
def test_any_region_equals_the_whole_prediction_bit_for_bit(model, tta):
    rng = np.random.default_rng(tta)
    img = rng.random((157, 263))
    full = predict(model, img, tile=252, tta=tta, batch=2)  # tile step 64
    windows = []

    def read(r):
        windows.append(r)
        return standardize(img)[None, r[0]:r[1], r[2]:r[3]].copy()  # only the window exists

    for _ in range(3):
        y0, x0 = rng.integers(0, 150), rng.integers(0, 250)
        region = (y0, rng.integers(y0 + 1, 158), x0, rng.integers(x0 + 1, 264))
        got = predict_region(model, read, img.shape, region, 252, batch=3, tta=tta)
        np.testing.assert_array_equal(got, full[:, region[0]:region[1], region[2]:region[3]])
        assert windows[-1] == region_window(img.shape, region, 252, 4, tta)
    y0, y1, x0, x1 = region_window((400, 400), (64, 128, 64, 128), 252, 4, tta)
    assert y0 >= 64 - 92 - 15 and y1 <= 128 + 96 + 15  # the halo: 92 before, 96 after (+15)


@pytest.mark.parametrize("n,tile", [(150, 204), (1000, 572), (1000, 204), (400, 1000),
                                    (333, 252), (17, 204)])
@pytest.mark.parametrize("reverse", [False, True])
def test_owners_cover_the_axis_once_from_tiles_on_the_grid(n, tile, reverse):
    pieces = axis_plan(n, tile, 4, reverse)
    assert pieces[0].start == 0 and pieces[-1].stop == n
    for a, b in zip(pieces, pieces[1:], strict=False):
        assert a.stop == b.start  # a partition, in order
    for p in pieces:
        assert p.offset % 16 == 0 and is_valid_size(p.size)  # on the pooling grid: exact
        assert p.offset <= p.start and p.stop <= p.offset + output_size(p.size)  # covered
    if len(pieces) > 1:  # owner boundaries on the tile step, from the anchored end
        s = tile_step(tile)
        cuts = [p.start for p in pieces[1:]]
        assert all((n - c if reverse else c) % s == 0 for c in cuts), cuts


def test_frames_describe_the_transforms():
    img = np.arange(5 * 7, dtype=float).reshape(1, 5, 7)
    ii, jj = np.indices((5, 7))
    for k in range(8):
        t = _transform(img, k)[0]
        f = _frame(k)
        src = [None, None]  # image coordinates of every pixel of t
        for d, grid in enumerate(np.indices(t.shape)):
            a, rev = f[d]
            src[a] = img.shape[1 + a] - 1 - grid if rev else grid
        np.testing.assert_array_equal(t, img[0][src[0], src[1]])
    assert ii.shape == jj.shape


class TightMemory:
    """A model that runs out of memory on tiles wider than `limit` (as a GPU would)."""

    def __init__(self, model, limit):
        self.model, self.limit, self.sizes = model, limit, []
        self.config, self.training = model.config, False
        self.geometry = model.geometry

    xp = np

    def eval(self):
        return self

    def release_caches(self):
        self.model.release_caches()

    def forward(self, x):
        self.sizes.append(x.shape[-1])
        if max(x.shape[-2:]) > self.limit:
            raise MemoryError(f"cannot allocate for a tile of {x.shape}")
        return self.model.forward(x)


def test_out_of_memory_retries_with_the_next_smaller_tile_and_says_so_once(model):
    img = np.random.default_rng(1).random((300, 320))
    tight = TightMemory(model, limit=300)
    with pytest.warns(TileRetryWarning) as said:
        got = predict(tight, img, tile=412)
    assert len(said) == 1 and "tiles of 412 px" in str(said[0].message)
    assert "tiles of 300 px" in str(said[0].message)  # 412 -> 396 -> ... -> 300 fits
    np.testing.assert_array_equal(got, predict(model, img, tile=300))
    np.testing.assert_allclose(got, predict(model, img, tile=412), rtol=0, atol=1e-12)
    tight.sizes.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next call starts at 300: nothing to say
        np.testing.assert_array_equal(predict(tight, img, tile=412), got)
    assert max(tight.sizes) == 300


def test_out_of_memory_at_the_smallest_tile_is_raised(model):
    tight = TightMemory(model, limit=150)
    with pytest.raises(MemoryError):
        predict(tight, np.zeros((100, 100)), tile=204)


def test_test_time_augmentation_streams_into_one_output(model):
    """tta=8 holds no padded copy or output per transform: its peak memory is about that of
    tta=1 (one tile of 892 covers the image: the forward pass dominates). Holding the eight
    padded images and outputs, as inference did before, made it 1.48 times the peak of tta=1;
    streaming, 1.09."""
    img = np.random.default_rng(2).random((500, 500))
    predict(model, img[:50, :50], tile=252, tta=8)  # compile and warm up outside the count
    peaks = {}
    for tta in (1, 8):
        tracemalloc.start()
        predict(model, img, tile=892, tta=tta)
        peaks[tta] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[8] < 1.25 * peaks[1], peaks


def test_the_flush_tile_owns_only_what_the_regular_ones_leave(model):
    """H = 1500, tile 572: offsets 0, 384, 768 and the flush 1120; owners at 0, 384, 768, 1152."""
    pieces = axis_plan(1500, 572, 4)
    assert [(p.start, p.stop, p.offset) for p in pieces] == [
        (0, 384, 0), (384, 768, 384), (768, 1152, 768), (1152, 1500, 1120)]
    assert ValidUNetGeometry(4).tile_offsets(1692, 572) == [0, 384, 768, 1120]
