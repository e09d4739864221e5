"""A network's geometry: how its input size maps to its output size, and the grid its tiles
must start on. The one object that overlap-tile inference, chunked prediction, the training
tiles, export and the commands ask about sizes (instead of a `depth` threaded through them).

    geometry.output_size(s)     output side for an input side s (ValueError if s is invalid)
    geometry.is_valid(s)        whether s passes every layer
    geometry.margin             input side - output side: the context a tile loses
                                (184 for the paper's valid U-Net; 0 for a padded network,
                                2 x its halo when inference tiles it)
    geometry.grid               tile origins must be multiples of it for tiles to compute the
                                whole-image numbers (2^poolings: 16 for the paper's U-Net)

Everything else (valid sizes near a size, the padded frame, tile steps and origins, the
smallest tile that can be stepped) follows from those in the base class. An architecture
gives its geometry as `model.geometry` (built from its config by `geometry(config)` in its
models/ file); `ValidUNetGeometry(depth)` (minunet/models/sizes.py) is the 2015 U-Net's,
`PaddedGeometry(grid)` a network whose output has its input's size.
"""

from __future__ import annotations

from dataclasses import dataclass


class Geometry:
    """Sizes of a network (module doc). Subclasses define `_output(s)` (None if invalid),
    `margin`, `grid` and `name`."""

    margin: int
    grid: int

    def _output(self, size: int) -> int | None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- sizes ---------------------------------------------------------------------

    def is_valid(self, size: int) -> bool:
        return size >= 1 and self._output(size) is not None

    def output_size(self, size: int) -> int:
        out = self._output(size) if size >= 1 else None
        if out is None:
            raise ValueError(self.invalid_size_message(size))
        return out

    def valid_sizes(self, lo: int, hi: int) -> list[int]:
        return [s for s in range(max(lo, 1), hi + 1) if self.is_valid(s)]

    def nearest_valid_sizes(self, size: int) -> tuple[int | None, int]:
        """(largest valid size <= size or None, smallest valid size >= size)."""
        below = next((s for s in range(size, 0, -1) if self.is_valid(s)), None)
        above = next(s for s in range(max(size, 1), max(size, 1) + 64 * self.grid + 1024)
                     if self.is_valid(s))
        return below, above

    def invalid_size_message(self, size: int) -> str:
        below, above = self.nearest_valid_sizes(size)
        near = f"{below} or {above}" if below is not None else f"{above}"
        return (f"invalid input size {size} for {self.name}: the nearest valid sizes are "
                f"{near} (valid sizes: {self.rule()})")

    def rule(self) -> str:
        lo = self.nearest_valid_sizes(1)[1]
        return f"{lo} + {self.grid}k"

    # -- overlap-tile geometry -----------------------------------------------------

    def padded_size(self, n: int) -> int:
        """Smallest valid network input P with P - margin >= n (the output covers n pixels)."""
        s = n + self.margin
        return s if self.is_valid(s) else self.nearest_valid_sizes(s)[1]

    def min_tile(self) -> int:
        """The smallest tile that can be stepped along an axis: its output spans >= one grid
        step."""
        s = self.nearest_valid_sizes(1)[1]
        while self.output_size(s) < self.grid:
            s = self.nearest_valid_sizes(s + 1)[1]
        return s

    def tile_step(self, tile: int) -> int:
        """How far apart neighbouring tiles start: the largest multiple of the grid not
        exceeding the tile's output."""
        g = self.grid
        step = (self.output_size(tile) // g) * g
        if step == 0:
            raise ValueError(f"tile {tile} has an output of {self.output_size(tile)} px, less "
                             f"than the grid step {g}: use a tile >= {self.min_tile()}")
        return step

    def tile_offsets(self, total: int, tile: int) -> list[int]:
        """Tile origins along one axis of a padded image of valid size `total`; the last tile
        ends flush with `total` (every origin on the grid: two valid sizes differ by a
        multiple of it)."""
        if tile >= total:
            return [0]
        step = self.tile_step(tile)
        return list(range(0, total - tile, step)) + [total - tile]

    def choose_tile(self, padded: tuple[int, ...], max_tile: int) -> tuple[int, ...]:
        """Tile side per axis: the whole padded axis if it is <= max_tile, else the largest
        valid size <= max_tile, but at least `min_tile()`."""
        below, above = self.nearest_valid_sizes(max_tile)
        if below is None:
            raise ValueError(f"tile {max_tile} is smaller than the smallest valid tile ({above} "
                             f"for {self.name}); use a tile >= {self.min_tile()}")
        return tuple(p if p <= max_tile else max(below, self.min_tile()) for p in padded)


@dataclass(frozen=True)
class PaddedGeometry(Geometry):
    """A network whose output has its input's size (padded convolutions), with `grid` = the
    product of its strides: valid sides are multiples of the grid, margin 0. Inference runs it
    with an overlap halo h as PaddedGeometry(grid, margin=2h): a tile of side T outputs T - 2h
    once the network's output is cropped by h on each side, exactly the single pass when h
    covers the receptive radius (minunet/inference/tiles.py, `inference_geometry`;
    minunet/nn/trace.py, `receptive_radius`)."""

    grid: int = 16
    margin: int = 0

    @property
    def name(self) -> str:
        halo = f" with a {self.margin // 2}-px halo" if self.margin else ""
        return f"a padded network on a {self.grid}-px grid{halo}"

    def _output(self, size: int) -> int | None:
        return size - self.margin if size % self.grid == 0 and size > self.margin else None

    def nearest_valid_sizes(self, size: int) -> tuple[int | None, int]:
        g = self.grid
        lo = max(g, -(-(self.margin + 1) // g) * g)
        below = (size // g) * g
        above = max(-(-size // g) * g, lo)
        return (below if below >= lo else None), above

    def rule(self) -> str:
        return f"multiples of {self.grid}"
