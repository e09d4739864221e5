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

Padded networks (the family: output side = input side, margin 0). A tile's border pixels see
the zeros of the padding where one pass over the image sees neighbours, so each tile gets an
overlap halo h: its input is the part it outputs plus h px on every side (mirrored at the
image's border, as the U-Net's 92 px are), and its output is cropped by h on each side before
stitching. That is the same tiling with margin 2h: the inference geometry
(`inference_geometry`) of a padded network is PaddedGeometry(grid, margin=2h), a tile of side T
outputs T - 2h, and everything above (axis_plan, the owners, region_window, chunks) runs on it
unchanged. With h at least the network's receptive radius (minunet/nn/trace.py,
`receptive_radius`: read off its forward) and tiles on its grid, every kept pixel equals one
pass over the image padded by h (`model.forward` itself away from the image's border when h
is a multiple of the grid and the sides are), to float rounding (tests/family/
test_tiling.py). The default halo is the radius rounded up to the grid (`default_halo`: tile
outputs stay whole grid steps); a smaller halo is faster and inexact: predict then prints the
measured `seam_error` once (`seam_note`). A network with no exact halo (global pooling,
align_corners=True) runs in one tile when the image fits, else with `largest_halo` (half the
tile's side as output) and the seam error printed.

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
from minunet.nn import trace
from minunet.nn.geometry import PaddedGeometry

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


def auto_tile(config, padded: tuple[int, int], batch: int, budget: int, geometry=None) -> int:
    """The largest valid tile side whose forward pass (batch tiles) fits in `budget` bytes;
    the whole padded image when it fits; `min_tile` if nothing fits. `geometry`: the
    inference geometry (`inference_geometry`; default the network's own)."""
    geometry = geometry or registry.geometry(config)
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



# --- padded networks: the halo ---------------------------------------------------------

_REACH: dict = {}  # (arch, config JSON) -> trace.Reach


def network_reach(config) -> trace.Reach:
    """The receptive radius of the network `config` describes (minunet/nn/trace.py,
    `receptive_radius`), with its reason; computed once per config."""
    key = (config.arch, config.to_json())
    if key not in _REACH:
        _REACH[key] = trace.reach(registry.get(config.arch), config)
    return _REACH[key]


def default_halo(config) -> int | None:
    """The exact halo of a padded network: its receptive radius rounded up to the grid (so
    that tile outputs stay whole grid steps); 0 for a valid network (its margin is its
    halo); None when no halo is exact (global pooling, ...: `network_reach`)."""
    geometry = registry.geometry(config)
    if geometry.margin > 0:
        return 0
    r = network_reach(config).radius
    return None if r is None else -(-r // geometry.grid) * geometry.grid


def largest_halo(tile: int, grid: int) -> int:
    """The halo of a network that cannot tile exactly, on tiles of side `tile` that do not
    cover the image: the largest multiple of the grid that leaves half the tile's side as
    output (4 times the work of a tile without halo)."""
    return (tile // 4) // grid * grid


def inference_geometry(geometry, halo: int = 0):
    """The geometry the tiling runs on (module doc, "Padded networks"): a valid network's
    own (its margin is the context; halo 0); for a padded network (margin 0) with a halo h,
    PaddedGeometry(grid, margin=2h): a tile of side T outputs T - 2h once the network's
    output is cropped by h on each side, and the image is mirrored by h at its border."""
    geometry = as_geometry(geometry)
    if geometry.margin > 0:
        if halo:
            raise ValueError(f"a halo applies to padded networks; {geometry.name} has a "
                             f"{geometry.margin} px margin, which makes its tiles exact: "
                             f"leave the halo out")
        return geometry
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
        raise ValueError(f"the halo must be an integer >= 0, got {halo!r}")
    return PaddedGeometry(grid=geometry.grid, margin=2 * int(halo))


def resolve_halo(model, halo: int | None, tile: int, shape) -> int:
    """The halo `predict` and `predict_region` use: `halo` if given, else `default_halo`;
    for a network without an exact halo, 0 when the tile covers the image, else
    `largest_halo` of the tile."""
    geo = model.geometry
    if halo is not None or geo.margin > 0:
        inference_geometry(geo, halo or 0)  # checks it
        return int(halo or 0)
    h = default_halo(model.config)
    if h is not None:
        return h
    whole = PaddedGeometry(grid=geo.grid)
    padded = (whole.padded_size(shape[0]), whole.padded_size(shape[1]))
    T = whole.choose_tile(padded, tile)
    cut = [t for t, p in zip(T, padded, strict=True) if t < p]  # the axes that are tiled
    return largest_halo(min(cut), geo.grid) if cut else 0


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


def predict(model, image, tile: int | None = None, batch: int = 1, tta: int = 1,
            halo: int | None = None):
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
    halo:  a padded network's overlap halo in px (module doc, "Padded networks"); None: its
           receptive radius rounded up to the grid (exact), or for a network that cannot
           tile exactly one tile over the image when it fits, else `largest_halo`.
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
        tile, halo = auto_tile_halo(model, (H, W), batch, halo)
    return predict_region(model, lambda r: img[:, r[0]:r[1], r[2]:r[3]], (H, W), (0, H, 0, W),
                          tile, batch, tta, halo)


def auto_tile_halo(model, shape, batch: int, halo: int | None = None) -> tuple[int, int]:
    """(tile, halo) for an image of `shape` when no tile is given: the tile from the free
    memory (`auto_tile`) on the inference geometry of the halo (`resolve_halo`; a network
    without an exact halo: one tile over the image if it fits, else that tile's
    `largest_halo`)."""
    budget = int(MEMORY_FRACTION * free_memory_bytes(model.xp))
    h = halo if halo is not None else default_halo(model.config)
    geo = inference_geometry(model.geometry, h or 0)
    tile = auto_tile(model.config, (geo.padded_size(shape[0]), geo.padded_size(shape[1])),
                     batch, budget, geo)
    return tile, resolve_halo(model, halo, tile, shape)


def predict_region(model, read, shape: tuple[int, int], region, tile: int,
                   batch: int = 1, tta: int = 1, halo: int | None = None):
    """Probabilities (K, y1 - y0, x1 - x0) of `region` = (y0, y1, x0, x1) of an image of
    `shape` (H, W): exactly what `predict` gives there for the whole image with this tile.

    read:  read((wy0, wy1, wx0, wx1)) -> the image's pixels in that window, (C, h, w),
           standardised, in the model's array module and dtype; called with
           `region_window(...)` (again after an out-of-memory retry, for the smaller tiles).
    tile:  the largest input tile side (rounded down to a valid one).
    halo:  a padded network's overlap halo (`predict`; None: `resolve_halo`).
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
    geometry = inference_geometry(model.geometry, resolve_halo(model, halo, tile, shape))
    try:
        while True:
            try:
                out = _predict_region(model, read, shape, region, tile, batch, tta, geometry)
                break
            except Exception as e:  # only out-of-memory errors are retried
                if not backend.is_out_of_memory(e):
                    raise
                smaller = _smaller_tile(shape, tile, geometry)
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


def seam_error(model, read, shape, tile: int, batch: int = 1, halo: int | None = None):
    """max |tiled - single pass| of the probabilities on a probe: the top-left part of the
    image that the first pair of tiles owns along a tiled axis (the first tile along the
    other), predicted as an image of its own with these tiles and in one tile. Returns
    (error, (y1, x1) the probe's size), or None when one tile covers the image (no seam).
    read: as `predict_region`'s."""
    tile = effective_tile(model, tile)
    h = resolve_halo(model, halo, tile, shape)
    geo = inference_geometry(model.geometry, h)
    plans = [axis_plan(n, tile, geo) for n in shape]
    if all(len(p) == 1 for p in plans):
        return None
    ax = 1 if len(plans[1]) > 1 else 0
    y1, x1 = (p[1].stop if a == ax else p[0].stop for a, p in enumerate(plans))
    probe = read((0, y1, 0, x1))

    def crop(r):
        return probe[:, r[0] : r[1], r[2] : r[3]]

    tiled = predict_region(model, crop, (y1, x1), (0, y1, 0, x1), tile, batch, 1, h)
    one = geo.padded_size(max(y1, x1))  # a tile that covers the probe
    single = predict_region(model, crop, (y1, x1), (0, y1, 0, x1), one, 1, 1, h)
    return float(model.xp.abs(tiled - single).max()), (y1, x1)


def seam_note(model, read, shape, tile: int, batch: int = 1, halo: int | None = None):
    """The line that predict prints once when its tiles are not exact (a halo below the
    receptive radius, or a network without one): the measured `seam_error` and the exact
    halo; None when the tiles are exact or one tile covers the image."""
    if model.geometry.margin > 0:
        return None
    tile = effective_tile(model, tile)
    h = resolve_halo(model, halo, tile, shape)
    reach = network_reach(model.config)
    if reach.radius is not None and h >= reach.radius:
        return None
    found = seam_error(model, read, shape, tile, batch, h)
    if found is None:
        return None
    err, (py, px) = found
    why = (f"halo {h} px < the receptive radius {reach.radius} px (leave --halo out for "
           f"{default_halo(model.config)} px: exact)" if reach.radius is not None else
           f"halo {h} px: {reach.reason}")
    return (f"seam error: max |tiled - single pass| = {err:.3g} on a {py}x{px} probe across "
            f"the first tile seam; {why}")


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


def _predict_region(model, read, shape, region, tile, batch, tta, geometry):
    """The body of `predict_region` for one tile size, on the inference geometry."""
    cfg = model.config
    xp = model.xp
    half = geometry.margin // 2  # 92 for the U-Net, the halo of a padded net: mirrored context
    y0, y1, x0, x1 = region
    wy0, wy1, wx0, wx1 = region_window(shape, region, tile, geometry, tta)
    window = read((wy0, wy1, wx0, wx1))  # (C, h, w) standardised
    origin = (wy0, wx0)
    out = xp.empty((cfg.n_classes, y1 - y0, x1 - x0), dtype=window.dtype)
    for k in range(tta):
        f = _frame(k)
        plan = _plan(shape, region, tile, geometry, k)
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
                pb = softmax(_crop_halo(model.forward(xb), geometry, shape_))
                # (B, K, th - margin, tw - margin)
                model.release_caches()  # inference never runs the backward
                for t, p in zip(chunk, pb, strict=True):
                    _stitch(out, p, t, f, shape, region, add=k > 0)
    if tta > 1:
        out /= tta
    return out


def _crop_halo(logits, geometry, tile_shape):
    """A padded network's output (B, K, th, tw) cropped by its halo to the geometry's output
    (th - margin, tw - margin); a valid network's output is that already (returned as is)."""
    oh, ow = (geometry.output_size(t) for t in tile_shape)
    cy, cx = (logits.shape[2] - oh) // 2, (logits.shape[3] - ow) // 2
    if cy == cx == 0:
        return logits
    return logits[:, :, cy : cy + oh, cx : cx + ow]


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
