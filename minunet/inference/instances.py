"""Cells from a probability map: instance labels by a seeded watershed on the distance transform.

The paper trains the U-Net to leave a thin gap of background between touching cells (the
separation borders, weighted up by the weight map; minunet/data/weightmap.py), so the cells of a
good prediction are already apart. Where the network missed a border, two cells form one blob
with a neck between them. `label_cells` cuts such necks and gives the separation borders back
to the cells:

1. foreground: probability > threshold; blobs smaller than `min_size` pixels are dropped.
2. the Euclidean distance transform of the foreground: the distance of every cell pixel to the
   background. Each cell has a ridge of large distances along its middle; a neck between two
   cells is a saddle of small distance.
3. seeds: the local maxima of the distance (scikit-image `peak_local_max`); a seeded watershed
   (scikit-image `watershed` on minus the distance, inside the foreground) grows one basin from
   each.
4. merging: two touching basins stay apart only if the distance at the saddle between them is
   below `split_neck` times the peak distance of the smaller one: the neck must be narrower
   than that fraction of the smaller cell's inscribed radius. Basins are merged from the widest
   neck down (union-find), so a wobbly cell with several maxima along a thick ridge becomes one
   cell again, while two round cells joined by a narrow neck stay two. split_neck = 0 never
   splits a blob (the cells are the connected components); 1 splits at every saddle.
5. separation borders (`weightmap.fill_separation_borders`): a background pixel with two
   different cells within `fill_borders` pixels (a (2r+1) x (2r+1) window) lies in the border
   between touching cells and goes to the nearest cell, unless it touches two cells (a gap) or
   has no partner of the other cell beside it (borders are pixel pairs). Background that
   touches one cell only is left alone, so cells do not grow outwards. 0 leaves the borders
   empty.

Returns labels 1..N (0 = background) in a uint16 array, or uint32 when there are more than
65535 cells. All steps are whole-array NumPy/SciPy/scikit-image: no loop over pixels (the merge
loops over pairs of touching basins).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from minunet.data.weightmap import fill_separation_borders, number_row_by_row

EIGHT = np.ones((3, 3), bool)  # 8-connectivity: cells that touch at a corner are one blob

THRESHOLD = 0.5  # cell probability above which a pixel is foreground
SPLIT_NECK = 0.5  # a neck narrower than this fraction of the smaller cell's radius splits
MIN_SIZE = 16  # blobs of fewer pixels are noise
FILL_BORDERS = 2  # the separation borders are 2 px wide (one pixel on each side of the edge)


def label_cells(prob: np.ndarray, threshold: float = THRESHOLD, split_neck: float = SPLIT_NECK,
                min_size: int = MIN_SIZE, fill_borders: int = FILL_BORDERS) -> np.ndarray:
    """Instance labels (H, W) of a cell probability map (H, W) in [0, 1] (module doc)."""
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"label_cells needs a probability map (H, W), got shape {prob.shape}")
    if not 0.0 <= split_neck <= 1.0:
        raise ValueError(f"split_neck must lie in [0, 1], got {split_neck}")
    if min_size < 0 or fill_borders < 0:
        raise ValueError(f"min_size and fill_borders must be >= 0, got {min_size}, "
                         f"{fill_borders}")
    fg = prob > threshold
    blobs, n = ndimage.label(fg, structure=EIGHT)
    if min_size > 1 and n:
        fg &= (np.bincount(blobs.ravel()) >= min_size)[blobs]
        blobs, n = ndimage.label(fg, structure=EIGHT)
    if n == 0:
        return np.zeros(prob.shape, np.uint16)
    dist = ndimage.distance_transform_edt(fg)
    basins = _basins(fg, blobs, dist)
    cells = _merge_wide_necks(basins, dist, split_neck)
    if fill_borders:
        cells = fill_separation_borders(cells, fill_borders)
    return _relabel(cells)


def _basins(fg: np.ndarray, blobs: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Watershed basins of -dist inside fg, one per local maximum of the distance (a plateau
    of equal maxima is one seed). int64 (H, W), 0 = background."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    peaks = peak_local_max(dist, min_distance=1, labels=blobs, exclude_border=False)
    seeds = np.zeros(fg.shape, bool)
    seeds[tuple(peaks.T)] = True  # peaks: (n, 2) row, column
    markers = ndimage.label(seeds, structure=EIGHT)[0]
    return watershed(-dist, markers, mask=fg, connectivity=2)


def saddles(labels: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (a, b), a < b, of 8-neighbouring regions of `labels` and the height of the pass
    between each: the largest min(dist[p], dist[q]) over neighbouring pixels p in a, q in b.
    Returns pairs (n, 2) int64 and heights (n,) float64."""
    h, w = labels.shape
    pairs, heights = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour relation once
        x0, x1 = max(0, -dx), w - max(0, dx)
        a, b = labels[0 : h - dy, x0:x1], labels[dy:h, x0 + dx : x1 + dx]
        da, db = dist[0 : h - dy, x0:x1], dist[dy:h, x0 + dx : x1 + dx]
        edge = (a > 0) & (b > 0) & (a != b)
        pa, pb = a[edge], b[edge]
        pairs.append(np.stack([np.minimum(pa, pb), np.maximum(pa, pb)], axis=1))
        heights.append(np.minimum(da[edge], db[edge]))
    p, v = np.concatenate(pairs).astype(np.int64), np.concatenate(heights)
    if p.size == 0:
        return p.reshape(0, 2), v
    key = p[:, 0] * (int(labels.max()) + 1) + p[:, 1]
    order = np.lexsort((-v, key))  # by pair, the highest pass first
    key, p, v = key[order], p[order], v[order]
    first = np.r_[True, key[1:] != key[:-1]]
    return p[first], v[first].astype(np.float64)


def _merge_wide_necks(basins: np.ndarray, dist: np.ndarray, split_neck: float) -> np.ndarray:
    """Merge touching basins whose pass is at least split_neck times the smaller peak
    (module doc, step 4), the highest pass first. Returns the merged labels."""
    n = int(basins.max())
    peak = np.zeros(n + 1)
    peak[1:] = ndimage.maximum(dist, basins, np.arange(1, n + 1))
    parent = np.arange(n + 1)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs, heights = saddles(basins, dist)
    for k in np.argsort(-heights, kind="stable"):
        a, b = root(pairs[k, 0]), root(pairs[k, 1])
        if a != b and heights[k] >= split_neck * min(peak[a], peak[b]):
            parent[b] = a
            peak[a] = max(peak[a], peak[b])
    return np.array([root(i) for i in range(n + 1)])[basins]


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in order of first appearance row by row; uint16 (uint32 for more than 65535
    cells)."""
    out = number_row_by_row(labels)
    return out.astype(np.uint16 if out.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def colour_overlay(gray: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image in gray with each cell tinted in its own colour (golden-
    ratio hues, so neighbours differ) and its outline drawn in that colour."""
    rgb = np.repeat((np.clip(gray, 0, 1) * 255.0)[..., None], 3, axis=2).astype(np.float32)
    labels = np.asarray(labels)
    n = int(labels.max())
    if n == 0:
        return np.rint(rgb).astype(np.uint8)
    hue = (np.arange(n + 1) * 0.618033988749895) % 1.0
    colours = _hsv_to_rgb(hue, 0.85, 1.0) * 255.0  # (n + 1, 3)
    cell = labels > 0
    rgb[cell] = (1 - alpha) * rgb[cell] + alpha * colours[labels[cell]]
    edge = cell & (ndimage.grey_erosion(labels, size=3) != ndimage.grey_dilation(labels, size=3))
    rgb[edge] = colours[labels[edge]]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """(n,) hues in [0, 1) at saturation s and value v -> (n, 3) RGB in [0, 1]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack([np.full_like(h, v), t, np.full_like(h, p)], 1),
                      np.stack([q, np.full_like(h, v), np.full_like(h, p)], 1),
                      np.stack([np.full_like(h, p), np.full_like(h, v), t], 1),
                      np.stack([np.full_like(h, p), q, np.full_like(h, v)], 1),
                      np.stack([t, np.full_like(h, p), np.full_like(h, v)], 1),
                      np.stack([np.full_like(h, v), np.full_like(h, p), q], 1)])  # (6, n, 3)
    return table[i, np.arange(h.size)]


# ------------------------------------------------------- options shared by the commands


def add_instance_options(p, prefix: str = "") -> None:
    """--split-neck, --min-size, --fill-borders (shared with predict --instances, whose help
    starts with `prefix`)."""
    p.add_argument("--split-neck", type=float, default=SPLIT_NECK,
                   help=f"{prefix}split a blob where the neck between two parts is narrower "
                        "than this fraction of the smaller part's inscribed radius; 0 never "
                        f"splits, 1 splits at every saddle (default {SPLIT_NECK})")
    p.add_argument("--min-size", type=int, default=MIN_SIZE,
                   help=f"{prefix}drop blobs of fewer pixels (default {MIN_SIZE})")
    p.add_argument("--fill-borders", type=int, default=FILL_BORDERS,
                   help=f"{prefix}give background pixels with two cells within this many "
                        "pixels (the separation borders the network leaves between touching "
                        f"cells) to the nearest cell; 0: leave them (default {FILL_BORDERS})")


