"""Size arithmetic: valid sizes, output size, margin, receptive field, tile geometry."""

import pytest

from minunet.models.sizes import (
    choose_tile,
    grid_step,
    input_window,
    invalid_size_message,
    is_valid_size,
    min_tile,
    nearest_valid_sizes,
    output_size,
    padded_size,
    receptive_field,
    size_margin,
    tile_offsets,
    valid_sizes,
)


def test_paper_sizes():
    assert output_size(572) == 388
    assert size_margin() == 184 and receptive_field() == 204
    assert grid_step() == 16 and grid_step(2) == 4


def test_valid_sizes_follow_124_plus_16b():
    assert valid_sizes(100, 700) == [124 + 16 * b for b in range(4, 37)]
    for s in valid_sizes(188, 700):
        assert output_size(s) == s - 184
    assert nearest_valid_sizes(500) == (492, 508)
    assert nearest_valid_sizes(10) == (None, 188)
    assert is_valid_size(44, depth=1) and output_size(44, depth=1) == 28


def test_margin_is_the_same_for_every_valid_size():
    for depth in (1, 2, 3, 4, 5):
        sizes = valid_sizes(1, 2 ** (depth + 4) * 4, depth)
        assert len(sizes) >= 3
        assert {s - output_size(s, depth) for s in sizes} == {size_margin(depth)}


def test_invalid_size_names_the_nearest_valid_ones():
    with pytest.raises(ValueError, match="nearest valid sizes are 492 or 508"):
        output_size(500)
    assert "188" in invalid_size_message(100, 4)


def test_tile_geometry_stays_on_the_pooling_grid():
    assert min_tile(4) == 204 and output_size(204) == 20
    assert padded_size(512) == 700 and padded_size(388) == 572
    for total in (572, 700, 1020):
        for tile in (204, 252, 572):
            offs = tile_offsets(total, tile)
            assert all(o % 16 == 0 for o in offs), (total, tile, offs)
            assert offs[-1] + tile == total or offs == [0]
            covered = set()
            for o in offs:  # the outputs cover the whole padded output without gaps
                covered |= set(range(o, o + output_size(min(tile, total))))
            assert covered >= set(range(total - 184))
    assert choose_tile((700, 300), 4, 572) == (572, 300)
    with pytest.raises(ValueError, match="use a tile >= 204"):
        tile_offsets(700, 188)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_input_window_is_what_the_network_depends_on(depth):
    """Bump one input pixel and see which output pixels move: the measured dependence
    equals input_window for every output position in one period of the pooling grid.

    Positive weights and a positive input keep every ReLU on, and a bump of +1e3 wins every
    max-pool it enters, so a pixel changes the output exactly when a path connects them."""
    import numpy as np

    from minunet.models.unet import UNetConfig, build_model

    m = build_model(UNetConfig(base=1, depth=depth, dtype="float64", dropout=0.0), seed=0).eval()
    for k in m.params:
        m.params[k] = np.abs(m.params[k])
    size = [s for s in valid_sizes(1, 400, depth) if output_size(s, depth) >= 2**depth][0]
    x = np.random.default_rng(0).random((1, 1, size, size)) + 0.5
    base = m.forward(x)[0, 1]  # (out, out)
    col = size // 2
    moved = []  # moved[q]: the output rows that change when input (q, col) is bumped
    for q in range(size):
        xb = x.copy()
        xb[0, 0, q, col] += 1e3
        diff = np.abs(m.forward(xb)[0, 1] - base).max(axis=1)  # per output row
        moved.append(set(np.nonzero(diff > 0)[0]))
    for p in range(2**depth):
        rows = [q for q in range(size) if p in moved[q]]
        assert (min(rows), max(rows)) == input_window(p, depth), (depth, p)


def test_the_geometry_object_is_the_size_arithmetic():
    """minunet/nn/geometry.py: the valid U-Net's Geometry answers exactly as the functions of
    minunet/models/sizes.py, which inference and chunked prediction asked before (depth 2..5);
    a padded network's is multiples of its grid with margin 0."""
    from minunet.models import sizes
    from minunet.nn.geometry import PaddedGeometry

    for depth in (2, 3, 4, 5):
        g = sizes.ValidUNetGeometry(depth)
        assert g.margin == sizes.size_margin(depth) and g.grid == sizes.grid_step(depth)
        assert g.min_tile() == sizes.min_tile(depth)
        for s in range(1, 700):
            assert g.is_valid(s) == sizes.is_valid_size(s, depth)
            assert g.nearest_valid_sizes(s) == sizes.nearest_valid_sizes(s, depth)
            if g.is_valid(s):
                assert g.output_size(s) == sizes.output_size(s, depth)
        for n in (1, 50, 333, 1000):
            assert g.padded_size(n) == sizes.padded_size(n, depth)
            total = sizes.padded_size(n, depth)
            for tile in (sizes.min_tile(depth), 572):
                t = g.choose_tile((total,), tile)[0]
                assert (t,) == sizes.choose_tile((total,), depth, tile)
                assert g.tile_offsets(total, t) == sizes.tile_offsets(total, t, depth)
    p = PaddedGeometry(grid=8)
    assert p.margin == 0 and p.is_valid(64) and not p.is_valid(60) and p.output_size(64) == 64
    assert p.nearest_valid_sizes(60) == (56, 64) and p.padded_size(61) == 64
    with pytest.raises(ValueError, match="nearest valid sizes are 56 or 64"):
        p.output_size(60)
