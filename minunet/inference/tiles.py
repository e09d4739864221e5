"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) and test-time augmentation.

The unpadded U-Net's output is 184 px smaller than its input (depth 4): every
3x3 convolution eats one pixel per side. To segment an H x W image we mirror the
missing 92 px of context at the borders ("the missing input data is
extrapolated by mirroring the input image", Sec. 2) and run the network on
tiles whose outputs cover the image without gaps.

Exactness: why tile offsets must be multiples of 2^depth. A 2x2, stride-2
max-pool sees the windows (2i, 2i+1); a tile cut at offset t of the padded
image sees the windows (t+2i, t+2i+1). These are the same windows as in one
pass over the whole image only if t is even; after the second pool they agree
only if t/2 is even as well, and so on: after `depth` pools, only if t is a
multiple of 2^depth (16 for the paper's net). Convolutions, up-convolutions and
the centre crops of the skips are translation-equivariant (the crop offset is
a constant of the architecture, the same for every valid input size), so with
such offsets every tile computes exactly the numbers the whole-image pass
computes at the same place. Off the grid (e.g. at offset 8) a deeper pool
pairs up different pixels and the tile's output differs (tests/test_infer.py
shows it does).

Valid sizes are 16b + 124 (depth 4), so two valid sizes differ by a multiple of
16 and the last tile, flush with the end of a valid padded image, is on the
grid as well. We therefore pad to a VALID total size P >= H + 184, step the
tiles by the largest multiple of 16 that does not exceed the tile's output
size (so a tile that is stepped needs an output of at least 16 px: the smallest
is 204, output 20; 188, output 4, can only cover a whole axis), and stitch:
where outputs overlap they agree to float rounding and nothing is blended;
each output pixel is taken from one tile, its owner (`axis_plan`): the tile
starting at 384j owns rows [384j, 384j + 384) (tile 572), so every boundary
between owners lies on the tile step, which is what lets chunked prediction
(minunet/inference/chunked.py) compute any chunk from whole tiles.
The stitched map equals `model.forward(padded image)` to float rounding
(tested in float64 to 1e-12), so the tile size changes speed and memory only.

Streaming. No padded copy of the image is made and no full-size buffer is kept
per test-time transform: each tile is gathered from the image through mirrored
index vectors, run (`batch` tiles of one shape at a time), and the part it owns,
turned back, is written into the one output array (first transform) or added to
it (the others, in order, so every pixel sums its transforms in the same order).
Memory: the image, the output, and one batch of tiles with its forward pass.

Test-time augmentation keeps its definition: transform k predicts the
transformed image as an image of its own (pooling grid from ITS top-left
corner). An axis that the transform reverses is therefore cut into owners from
its far end (boundaries at n - 384j in the transformed frame), each computed by
the smallest valid tile that starts on the grid at or before it (at most one
grid step larger than the tile). Then an owner boundary falls on every multiple
of the tile step in the ORIGINAL image, for all 8 transforms.

Regions. `predict_region` computes any rectangle of the output from a window
of the image that holds the real neighbouring pixels (mirroring only at the
image's true border): it runs exactly the tiles the whole image would run for
that rectangle, on the same pixels, so it gives the same numbers bit for bit
(with the fast ops, whose batched forward computes every tile alone; the
plain ops' one GEMM over the batch makes the batch's make-up matter at 1e-14).

With `tile=None` the tile side is chosen from the free memory of the device
(the whole padded image in one pass when it fits). An out-of-memory error
retries with the next smaller valid tile (same result to float rounding, by
exactness), says so once, and later calls with this model start from there.
On the GPU the image is copied to the device once; tiling, stitching and the
test-time transforms all happen there.
"""

from __future__ import annotations

import warnings
import weakref
from typing import NamedTuple

import numpy as np

from minunet import backend
from minunet.data.augment import mirror_index as reflect  # the one mirror of positions
from minunet.models import registry, standardize
from minunet.models.sizes import as_geometry

# Fraction of the free memory that one forward pass may plan to use, and the
# factor on the layer outputs that covers what the layers keep for backward
# (ReLU outputs, conv inputs) and the transient pre-activation buffers.
MEMORY_FRACTION = 0.6
ACTIVATION_FACTOR = 2.5
CPU_DEFAULT_BUDGET = 2 * 2**30  # when the free RAM cannot be read
CPU_MAX_BUDGET = 4 * 2**30  # larger CPU tiles are hardly faster; be kind to shared machines


def forward_bytes(config, size: int, batch: int = 1) -> int:
    """Planned memory of one inference forward pass on (batch, C, size, size): the layer
    outputs times ACTIVATION_FACTOR plus the largest im2col workspace."""
    rows = registry.get(config.arch).layer_table(config, size, batch)
    act = sum(r["act_mb"] for r in rows) * 2**20
    cols = max(r["im2col_mb"] for r in rows) * 2**20
    return int(ACTIVATION_FACTOR * act + cols)


def free_memory_bytes(xp) -> int:
    """Free memory: on the GPU the device's free bytes plus CuPy's cached free blocks; on
    the CPU MemAvailable (Linux), at most CPU_MAX_BUDGET / MEMORY_FRACTION."""
    if xp is np:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
                        return min(avail, int(CPU_MAX_BUDGET / MEMORY_FRACTION))
        except OSError:
            pass
        return int(CPU_DEFAULT_BUDGET / MEMORY_FRACTION)
    free, _total = xp.cuda.Device().mem_info
    return int(free + xp.get_default_memory_pool().free_bytes())


def auto_tile(config, padded: tuple[int, int], batch: int, budget: int) -> int:
    """The largest valid tile side whose forward pass (batch tiles) fits in `budget` bytes;
    the whole padded image when it fits; `min_tile` if nothing fits."""
    geometry = registry.geometry(config)
    smallest = geometry.min_tile()
    sizes = geometry.valid_sizes(smallest, max(smallest, *padded))
    best = sizes[0]
    for s in sizes:  # memory grows with s: stop at the first that does not fit
        if forward_bytes(config, s, batch) > budget:
            break
        best = s
    return best


def mirror_pad(image, top: int, bottom: int, left: int, right: int):
    """Mirror-pad the last two axes of image (..., H, W) -> (..., H+top+bottom, W+left+right).

    numpy 'reflect' (the edge pixel is not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...), and
    pads longer than the image keep reflecting back and forth (period 2n - 2); a single
    row or column is repeated. Done by gathering with index vectors, so it runs on the
    image's device (NumPy or CuPy) without a copy to the host.
    """
    xp = backend.xp_of(image)
    H, W = image.shape[-2:]
    iy = xp.asarray(_reflect_index(H, top, bottom))
    ix = xp.asarray(_reflect_index(W, left, right))
    return image.take(iy, axis=-2).take(ix, axis=-1)


def _reflect_index(n: int, before: int, after: int) -> np.ndarray:
    """Source index of each padded position along an axis of length n (see mirror_pad)."""
    return reflect(np.arange(-before, n + after), n)



# --- where the tiles go ----------------------------------------------------------------


class Piece(NamedTuple):
    """One owner along an axis: the output interval [start, stop) it owns and the tile that
    computes it (coordinates of the transformed image the axis belongs to)."""

    start: int  # first owned output pixel (output pixel i sits on image pixel i)
    stop: int  # one past the last
    offset: int  # the tile's first input pixel in the padded frame: on the geometry's grid
    size: int  # the tile's input side (valid); it outputs pixels offset .. offset+size-margin-1


def axis_plan(n: int, tile: int, geometry, reverse: bool = False) -> list[Piece]:
    """The owners of an axis of n pixels, in order, for tiles of at most `tile` (module doc).

    The padded axis is P = padded_size(n). If the tile covers it, one tile owns everything.
    Else the tiles start at 0, s, 2s, ... and the last one flush with P (sizes.tile_offsets;
    s = tile_step); tile j owns [js, (j+1)s) and the flush one the rest. reverse=True (an axis
    that the test-time transform reversed) anchors the owners at the far end instead:
    [n - (j+1)s, n - js), each computed by the smallest valid tile starting on the grid at
    or before it. Either way every tile starts on the pooling grid: the result is exact.
    """
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    P = geo.padded_size(n)
    T = geo.choose_tile((P,), tile)[0]
    if T >= P:
        return [Piece(0, n, 0, P)]
    s, g = geo.tile_step(T), geo.grid
    if not reverse:
        offs = geo.tile_offsets(P, T)  # [0, s, 2s, ..., P - T]
        pieces = [Piece(j * s, min((j + 1) * s, n), o, T) for j, o in enumerate(offs[:-1])]
        pieces.append(Piece((len(offs) - 1) * s, n, offs[-1], T))  # the flush tile
        return [p for p in pieces if p.start < p.stop]
    pieces, b = [], n
    while b > 0:
        a = max(0, b - s)
        o = a - a % g  # on the grid, at most g - 1 pixels before the owned interval
        pieces.append(Piece(a, b, o, geo.padded_size(b - o)))
        b = a
    return pieces[::-1]


def _frame(k: int) -> list[tuple[int, bool]]:
    """Transform k (`_transform`) as axis bookkeeping: for the transformed image's rows and
    columns, the image axis (0 rows, 1 columns) each runs along and whether it runs backwards.
    A quarter turn makes the new rows the old columns backwards; a flip reverses the columns."""
    f = [(0, False), (1, False)]
    for _ in range(k % 4):
        f = [(f[1][0], not f[1][1]), f[0]]
    if k >= 4:
        f = [f[0], (f[1][0], not f[1][1])]
    return f


class _Tile(NamedTuple):
    """One tile to run for transform k: its two owners (rows, columns of the transformed
    image) and the owned part of the region, in the transformed image's coordinates."""

    rows: Piece
    cols: Piece
    own: tuple[int, int, int, int]  # r0, r1, c0, c1


def _plan(shape, region, tile, geometry, k) -> list[_Tile]:
    """The tiles transform k runs for `region` = (y0, y1, x0, x1) of an image of `shape`."""
    axes = []
    for a, rev in _frame(k):
        n, lo, hi = shape[a], region[2 * a], region[2 * a + 1]
        if rev:
            lo, hi = n - hi, n - lo
        axes.append([(p, max(p.start, lo), min(p.stop, hi))
                     for p in axis_plan(n, tile, geometry, rev) if p.start < hi and p.stop > lo])
    return [_Tile(pr, pc, (r0, r1, c0, c1)) for pr, r0, r1 in axes[0] for pc, c0, c1 in axes[1]]


def _source_index(piece: Piece, n: int, rev: bool, half: int) -> np.ndarray:
    """Image pixel (0..n-1) under each input pixel of a tile: the tile's padded positions
    minus `half` (the mirror width), reversed if the transform reversed the axis, mirrored."""
    t = np.arange(piece.offset - half, piece.offset + piece.size - half)
    return reflect(n - 1 - t if rev else t, n)


def region_window(shape, region, tile: int, geometry=4, tta: int = 1):
    """The window (y0, y1, x0, x1) of the image that `predict_region` reads for `region`:
    the bounding box of every pixel under every tile it runs (the region plus about 92 px
    of context on each side, 16 px more on an axis a test-time transform reverses)."""
    geometry = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    half = geometry.margin // 2
    lo, hi = [shape[0], shape[1]], [0, 0]
    for k in range(tta):
        f = _frame(k)
        for t in _plan(shape, region, tile, geometry, k):
            for d, piece in enumerate((t.rows, t.cols)):
                a, rev = f[d]
                idx = _source_index(piece, shape[a], rev, half)
                lo[a], hi[a] = min(lo[a], int(idx.min())), max(hi[a], int(idx.max()) + 1)
    return lo[0], hi[0], lo[1], hi[1]


# --- prediction ------------------------------------------------------------------------


class TileRetryWarning(RuntimeWarning):
    """Prediction ran out of memory and went on with smaller tiles (same result)."""


_TILE_LIMIT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> largest tile


def predict(model, image, tile: int | None = None, batch: int = 1, tta: int = 1):
    """Class probabilities (K, H, W) for one image (H, W) or (C, H, W), any size.

    model: a model of the registry (on the CPU or the GPU; the image is moved there once).
    tile:  the largest input tile side (a valid size, or rounded down to one);
           None: chosen from the device's free memory (the whole padded image in
           one pass when it fits).
    batch: tiles per forward pass.
    tta:   1 (none), 4 (the four rotations) or 8 (rotations and their mirror
           images); the probabilities of the transformed copies, transformed back,
           are averaged (the dihedral group of the square, as the paper's rotated
           copies).
    Returns probabilities in the model's array module (NumPy or CuPy) and dtype.
    """
    cfg = model.config
    xp = model.xp
    if getattr(image, "ndim", None) not in (2, 3):
        raise ValueError(f"predict expects an image (H, W) or (C, H, W), got shape "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    img = standardize(xp.asarray(image, dtype=cfg.dtype))  # the one host -> device copy
    if img.ndim == 2:
        img = img[None]  # (1, H, W)
    if img.shape[0] != cfg.in_channels:
        raise ValueError(f"predict expects an image (H, W) or (C, H, W) with C = "
                         f"{cfg.in_channels} (the model's in_channels), got shape "
                         f"{tuple(image.shape)}")
    _, H, W = img.shape
    if tile is None:
        padded = (model.geometry.padded_size(H), model.geometry.padded_size(W))
        tile = auto_tile(cfg, padded, batch, int(MEMORY_FRACTION * free_memory_bytes(xp)))
    return predict_region(model, lambda r: img[:, r[0]:r[1], r[2]:r[3]], (H, W), (0, H, 0, W),
                          tile, batch, tta)


def predict_region(model, read, shape: tuple[int, int], region, tile: int,
                   batch: int = 1, tta: int = 1):
    """Probabilities (K, y1 - y0, x1 - x0) of `region` = (y0, y1, x0, x1) of an image of
    `shape` (H, W): exactly what `predict` gives there for the whole image with this tile.

    read:  read((wy0, wy1, wx0, wx1)) -> the image's pixels in that window, (C, h, w),
           standardised, in the model's array module and dtype; called with
           `region_window(...)` (again after an out-of-memory retry, for the smaller tiles).
    tile:  the largest input tile side (rounded down to a valid one).
    """
    if tta not in (1, 4, 8):
        raise ValueError(f"tta must be 1, 4 or 8, got {tta}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    y0, y1, x0, x1 = region
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise ValueError(f"region {region} is not a non-empty part of an image of {shape}")
    was_training = model.training
    model.eval()  # no dropout; restored on the way out
    first = tile = effective_tile(model, tile)
    try:
        while True:
            try:
                out = _predict_region(model, read, shape, region, tile, batch, tta)
                break
            except Exception as e:  # only out-of-memory errors are retried
                if not backend.is_out_of_memory(e):
                    raise
                smaller = _smaller_tile(shape, tile, model.geometry)
                if smaller is None:
                    raise
            _free_memory(model)  # outside the except: the traceback's arrays are gone
            tile = _TILE_LIMIT[model] = smaller
    finally:
        model.training = was_training
    if tile != first:
        warnings.warn(f"out of {'GPU ' if model.xp is not np else ''}memory with tiles of "
                      f"{first} px: predicted with tiles of {tile} px instead (the same result "
                      f"to float rounding: overlap-tile inference is exact); later predictions "
                      f"with this model start there", TileRetryWarning, stacklevel=2)
    return out


def effective_tile(model, tile: int) -> int:
    """The tile `predict_region` starts from: `tile`, or less after an out-of-memory error."""
    return min(tile, _TILE_LIMIT.get(model, tile))


def _smaller_tile(shape, tile: int, geometry) -> int | None:
    """The next valid tile below the largest one used for `shape`; None below the minimum."""
    geo = as_geometry(geometry)
    used = max(geo.choose_tile((geo.padded_size(shape[0]), geo.padded_size(shape[1])), tile))
    below = geo.nearest_valid_sizes(used - 1)[0]
    return below if below is not None and below >= geo.min_tile() else None


def _free_memory(model) -> None:
    """After an out-of-memory error: drop the layers' caches, the workspaces and (GPU) the
    memory pool's free blocks."""
    model.release_caches()
    backend.release_workspaces()
    if model.xp is not np:
        model.xp.get_default_memory_pool().free_all_blocks()


def _predict_region(model, read, shape, region, tile, batch, tta):
    """The body of `predict_region` for one tile size."""
    cfg = model.config
    xp = model.xp
    half = model.geometry.margin // 2  # 92 for the U-Net: the context mirrored at the border
    y0, y1, x0, x1 = region
    wy0, wy1, wx0, wx1 = region_window(shape, region, tile, model.geometry, tta)
    window = read((wy0, wy1, wx0, wx1))  # (C, h, w) standardised
    origin = (wy0, wx0)
    out = xp.empty((cfg.n_classes, y1 - y0, x1 - x0), dtype=window.dtype)
    for k in range(tta):
        f = _frame(k)
        plan = _plan(shape, region, tile, model.geometry, k)
        index = {}  # (frame axis, piece) -> positions in the window, on the device

        def idx(d, piece, f=f, index=index):
            if (d, piece) not in index:
                a, rev = f[d]
                index[d, piece] = xp.asarray(_source_index(piece, shape[a], rev, half)
                                             - origin[a])
            return index[d, piece]

        for shape_ in sorted({(t.rows.size, t.cols.size) for t in plan}):
            group = [t for t in plan if (t.rows.size, t.cols.size) == shape_]
            for i in range(0, len(group), batch):
                chunk = group[i : i + batch]
                xb = xp.stack([_gather(window, idx(0, t.rows), idx(1, t.cols), f[0][0] == 1)
                               for t in chunk])  # (B, C, th, tw)
                pb = softmax(model.forward(xb))  # (B, K, th - margin, tw - margin)
                model.release_caches()  # inference never runs the backward
                for t, p in zip(chunk, pb, strict=True):
                    _stitch(out, p, t, f, shape, region, add=k > 0)
    if tta > 1:
        out /= tta
    return out


def _gather(window, iy, ix, transposed: bool):
    """A tile of the transformed image from the window: rows iy, columns ix of the
    transformed image as window positions; a quarter turn also swaps the axes."""
    if transposed:  # the tile's rows run along the window's columns
        return window.take(ix, axis=1).take(iy, axis=2).transpose(0, 2, 1)
    return window.take(iy, axis=1).take(ix, axis=2)


def _stitch(out, p, t: _Tile, f, shape, region, add: bool):
    """Write (or add) the part of tile output p (K, oh, ow) that tile t owns, turned back
    to the image's orientation, into out (the region's probabilities)."""
    r0, r1, c0, c1 = t.own
    blk = p[:, r0 - t.rows.offset : r1 - t.rows.offset, c0 - t.cols.offset : c1 - t.cols.offset]
    span = [None, None]  # image interval per image axis
    for d, (lo, hi) in enumerate(((r0, r1), (c0, c1))):
        a, rev = f[d]
        n = shape[a]
        span[a] = (n - hi, n - lo) if rev else (lo, hi)
    if f[0][0] == 1:  # rows of the tile are columns of the image
        blk = blk.transpose(0, 2, 1)
    for d in range(2):
        a, rev = f[d]
        if rev:
            blk = blk[:, ::-1] if a == 0 else blk[:, :, ::-1]
    (ya, yb), (xa, xb) = span
    dst = out[:, ya - region[0] : yb - region[0], xa - region[2] : xb - region[2]]
    if add:
        dst += blk
    else:
        dst[...] = blk


def _transform(img, k: int):
    """The k-th of the 8 dihedral transforms of (C, H, W): k % 4 quarter turns, then a
    left-right flip if k >= 4. k < 4 are the rotations (tta=4)."""
    xp = backend.xp_of(img)
    out = xp.rot90(img, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def softmax(logits):
    """Softmax over axis 1 of (N, K, H, W), stable."""
    xp = backend.xp_of(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)
