"""Size arithmetic: valid sizes, output size, margin, receptive field, tile geometry."""

import pytest

from minunet.sizes import (
    choose_tile,
    grid_step,
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
    assert size_margin() == 184 and receptive_field() == 185
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
