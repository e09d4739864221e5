"""Size arithmetic of the unpadded U-Net: the one place that knows how sizes flow.

Ronneberger et al. 2015, Sec. 2: every 3x3 convolution is unpadded and eats one
pixel per side, every 2x2 max-pool halves the size and needs it even, every
up-convolution doubles it. At depth 4 a valid input side is 124 + 16b with
b >= 4 (the bottleneck size), and the output is 184 pixels smaller:

    572 -> 568 -> 284 -> 280 -> 140 -> 136 -> 68 -> 64 -> 32 -> 28 (bottleneck)
        -> 56 -> 52 -> 104 -> 100 -> 200 -> 196 -> 392 -> 388

(docs/DESIGN.md, "The paper's numbers".) Everything that needs a size imports
it from here: the model checks its input, inference pads, tiles and stitches,
the training data cuts tiles, the CLIs refuse invalid sizes with the nearest
valid ones.

Overlap-tile inference (Sec. 2, Fig. 2) needs tile origins on the pooling grid.
A 2x2 stride-2 pool sees the windows (2i, 2i+1); a tile cut at offset t sees
(t+2i, t+2i+1): the same windows as the whole-image pass only if t is even;
after the second pool only if t/2 is even too; after `depth` pools only if t
is a multiple of 2^depth (16 for the paper's net). Convolutions, up-convolutions
and the skips' centre crops are translation-equivariant, so tiles on that grid
compute exactly the whole-image numbers (see minunet/inference/tiles.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.nn.geometry import Geometry


def _size_trace(size: int, depth: int):
    """Spatial sizes after each stage [(stage name, size)], or None if some stage is invalid.

    Pools only on even sizes; every convolution output >= 1.
    """
    trace = []
    s = size
    for i in range(depth):
        s -= 4  # two unpadded 3x3 convs
        if s < 2 or s % 2:
            return None
        trace.append((f"down{i}", s))
        s //= 2
    s -= 4
    if s < 1:
        return None
    trace.append(("bottleneck", s))
    for i in reversed(range(depth)):
        s = 2 * s - 4  # up-conv doubles, two 3x3 convs take 4
        if s < 1:
            return None
        trace.append((f"up{i}", s))
    return trace


def is_valid_size(size: int, depth: int = 4) -> bool:
    """True if an input side `size` passes every pool (even) and every conv (positive)."""
    return _size_trace(size, depth) is not None


def output_size(size: int, depth: int = 4) -> int:
    """Output side for an input side `size` (572 -> 388 at depth 4); ValueError if invalid."""
    trace = _size_trace(size, depth)
    if trace is None:
        raise ValueError(invalid_size_message(size, depth))
    return trace[-1][1]


def valid_sizes(lo: int, hi: int, depth: int = 4) -> list[int]:
    """All valid input sides in [lo, hi] (at depth 4: 188, 204, ..., i.e. 124 + 16b, b >= 4)."""
    return [s for s in range(max(lo, 1), hi + 1) if is_valid_size(s, depth)]


def nearest_valid_sizes(size: int, depth: int = 4) -> tuple[int | None, int]:
    """The largest valid size <= size (None if there is none) and the smallest valid size > size."""
    below = next((s for s in range(size, 0, -1) if is_valid_size(s, depth)), None)
    above = next(s for s in range(max(size, 0) + 1, max(size, 0) + 2 ** (depth + 2) + 10**6)
                 if is_valid_size(s, depth))
    return below, above


def invalid_size_message(size: int, depth: int) -> str:
    """The one-line error for an invalid input side, naming the nearest valid ones."""
    below, above = nearest_valid_sizes(size, depth)
    near = f"{below} or {above}" if below else f"{above}"
    return (f"input size {size} is not valid for a depth-{depth} U-Net (every 2x2 pool needs "
            f"an even size, every conv a positive one); the nearest valid sizes are {near}")


def size_margin(depth: int = 4) -> int:
    """input - output for any valid input (184 at depth 4): the context the net consumes.

    The same for every valid size: each stage subtracts a constant at its own scale.
    """
    s = nearest_valid_sizes(1, depth)[1]
    return s - output_size(s, depth)


def input_window(p: int, depth: int = 4) -> tuple[int, int]:
    """First and last input index (along one axis) that output index p depends on.

    Walks the network backward with intervals: a valid 3x3 conv widens [a, b] to
    [a, b+2]; a 2x2 pool maps [a, b] to [2a, 2b+1]; an up-convolution output u comes
    from input u // 2; a skip adds the constant crop offset. Output p of the network
    sits at input p + margin/2 (its centre), but the window is not centred: the pools
    group pixels in fixed pairs, so the window depends on p modulo 2^depth.
    """
    s = nearest_valid_sizes(1, depth)[1]  # any valid size: the offsets are the same for all
    enc, x = [], s
    for _ in range(depth):
        x -= 4  # two 3x3 convs
        enc.append(x)  # the encoder map that the skip crops
        x //= 2
    x -= 4  # bottleneck output
    crop = {}
    for i in reversed(range(depth)):
        crop[i] = (enc[i] - 2 * x) // 2  # skip i cropped to the up-conv output 2x
        x = 2 * x - 4

    def from_encoder(i, a, b):  # [a, b] in the output of level i's two convs -> input
        a, b = a, b + 4
        return (a, b) if i == 0 else from_encoder(i - 1, 2 * a, 2 * b + 1)

    def from_decoder(i, a, b):  # [a, b] in the output of up level i -> input
        a, b = a, b + 4  # the concatenated map before its two convs
        lo, hi = from_encoder(i, a + crop[i], b + crop[i])  # the skip, cropped
        a, b = a // 2, b // 2  # the up-conv's input
        if i == depth - 1:  # the bottleneck: two convs on the pooled deepest encoder map
            lo2, hi2 = from_encoder(depth - 1, 2 * a, 2 * (b + 4) + 1)
        else:
            lo2, hi2 = from_decoder(i + 1, a, b)
        return min(lo, lo2), max(hi, hi2)

    return from_decoder(0, p, p)


def receptive_field(depth: int = 4) -> int:
    """The widest input window one output pixel depends on: 204 at depth 4.

    Not the margin + 1 (185): because the pools group pixels in fixed pairs, an
    output pixel sees 188 or 204 input pixels along an axis, by its position
    modulo 2^depth (`input_window`). The margin (184) is the context every output
    pixel needs; the receptive field is what some output pixels see.
    """
    return max(hi - lo + 1 for lo, hi in (input_window(p, depth) for p in range(2**depth)))


def grid_step(depth: int = 4) -> int:
    """The pooling grid: tile origins must be multiples of 2^depth (16 at depth 4; module doc)."""
    return 2**depth


# --- overlap-tile geometry (used by minunet/inference/tiles.py) ------------------------------


def padded_size(n: int, depth: int = 4) -> int:
    """Smallest valid network input P with P - margin >= n (the output covers n pixels)."""
    s = n + size_margin(depth)
    return s if is_valid_size(s, depth) else nearest_valid_sizes(s, depth)[1]


def min_tile(depth: int = 4) -> int:
    """The smallest tile that can be stepped along an axis: its output must span at least
    one grid step 2^depth (204 at depth 4: output 20; 188 gives only 4, so tiles of 188
    on the 16-pixel grid would leave gaps; 188 works only as the whole axis)."""
    s = nearest_valid_sizes(1, depth)[1]
    while output_size(s, depth) < grid_step(depth):
        s = nearest_valid_sizes(s, depth)[1]
    return s


def tile_offsets(total: int, tile: int, depth: int = 4) -> list[int]:
    """Input-tile origins along one axis of a padded image of valid size `total`.

    Steps are the largest multiple of 2^depth not exceeding the tile's output
    size, and the last tile ends flush with `total`. Two valid sizes differ by a
    multiple of 2^depth, so every origin, the last one included, is on the
    pooling grid, which makes the stitch exact (module doc).
    """
    if tile >= total:
        return [0]
    step = tile_step(tile, depth)
    offs = list(range(0, total - tile, step))
    return offs + [total - tile]


def tile_step(tile: int, depth: int = 4) -> int:
    """How far apart neighbouring tiles of side `tile` start: the largest multiple of 2^depth
    not exceeding the tile's output (572 -> 384: output 388; at depth 4 always tile - 188)."""
    g = grid_step(depth)
    step = (output_size(tile, depth) // g) * g
    if step == 0:
        raise ValueError(f"tile {tile} has an output of {output_size(tile, depth)} px, less than "
                         f"the pooling grid step {g}: use a tile >= {min_tile(depth)}")
    return step


def choose_tile(padded: tuple[int, int], depth: int, max_tile: int) -> tuple[int, int]:
    """Tile side per axis: the whole padded axis if it is <= max_tile, else the largest
    valid size <= max_tile, but at least `min_tile(depth)` (a smaller tile cannot be
    stepped along the pooling grid without gaps)."""
    below, above = nearest_valid_sizes(max_tile, depth)
    if below is None:
        raise ValueError(f"tile {max_tile} is smaller than the smallest valid tile ({above} for "
                         f"a depth-{depth} U-Net); use a tile >= {min_tile(depth)}")
    return tuple(p if p <= max_tile else max(below, min_tile(depth)) for p in padded)


# --- the same as an object: the valid U-Net's geometry (minunet/nn/geometry.py) -------


@dataclass(frozen=True)
class ValidUNetGeometry(Geometry):
    """The unpadded U-Net of `depth` poolings (Ronneberger et al. 2015, Sec. 2): the arithmetic
    of the functions above, with their messages."""

    depth: int = 4

    @property
    def name(self) -> str:
        return f"a depth-{self.depth} U-Net"

    @property
    def margin(self) -> int:
        return size_margin(self.depth)

    @property
    def grid(self) -> int:
        return 2**self.depth

    def _output(self, size: int) -> int | None:
        return output_size(size, self.depth) if is_valid_size(size, self.depth) \
            else None

    def nearest_valid_sizes(self, size: int) -> tuple[int | None, int]:
        return nearest_valid_sizes(size, self.depth)

    def invalid_size_message(self, size: int) -> str:
        return invalid_size_message(size, self.depth)


def as_geometry(g) -> Geometry:
    """A Geometry, a model (its .geometry), or an int d: the valid U-Net of depth d."""
    if isinstance(g, Geometry):
        return g
    if isinstance(g, int):
        return ValidUNetGeometry(g)
    geometry = getattr(g, "geometry", None)
    if isinstance(geometry, Geometry):
        return geometry
    raise TypeError(f"expected a Geometry, a model or a depth, got {type(g).__name__}")
