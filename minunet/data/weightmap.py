"""The paper's pixel-wise loss weight map (Ronneberger et al. 2015, Sec. 3, Eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),   w0 = 10, sigma = 5 px

w_c balances the class frequencies; d1, d2 are the distances to the border of the nearest and the
second-nearest cell. The border term is applied on background pixels (the membranes, the gaps and
the separation borders between touching cells), which it weights up so the network learns to
separate cells. Cells are instance labels; for ISBI 2012 they are the connected components of the
cell label (4-connectivity). Computed once per ground truth: `cached_weight_map`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..files import save_figure

W0 = 10.0  # paper, Sec. 3: w0 = 10
SIGMA = 5.0  # paper, Sec. 3: sigma ~ 5 pixels
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)  # cross-shaped 3x3


def separation_borders(instances: np.ndarray, size: int = 3) -> np.ndarray:
    """Pixels where two different cells meet, found by morphology.

    A pixel is a border pixel if its 3x3 neighbourhood holds two different non-zero instance ids
    (grey dilation != grey erosion over the cells): both sides of an edge between touching cells,
    and background pixels of a one-pixel gap between two cells.
    instances: (H, W) int, 0 = background. size: the neighbourhood, size x size (3 for the
    borders; `fill_separation_borders` also asks for wider ones). Returns (H, W) bool.
    """
    lab = np.asarray(instances).astype(np.int64)
    big = int(lab.max()) + 1  # stands in for background in the erosion (not int64 max: overflow)
    hi = ndimage.maximum_filter(lab, size=size, mode="nearest")
    lo = ndimage.minimum_filter(np.where(lab > 0, lab, big), size=size, mode="nearest")
    return (lo != big) & (hi != lo)


def fill_separation_borders(labels: np.ndarray, radius: int = 2) -> np.ndarray:
    """Give removed separation borders back to the cells: the inverse of the border removal.

    A background pixel goes to its nearest cell (Euclidean distance transform) when
    1. two different cells lie within `radius` px of it (a (2r+1) x (2r+1) window): it lies
       between touching cells, not along a cell's free outline, so cells do not grow outwards;
    2. its 3x3 neighbourhood holds pixels of one cell only: a removed border pixel never
       touches another cell's remaining pixels (they would have been removed as well), so a
       pixel 1 px away from two cells is a gap between them and stays background;
    3. a filled pixel of another cell lies in its 3x3 neighbourhood: removed border pixels come
       in pairs, one on each side of the edge. Lone ones are taken back until none is left.
    Rules 2 and 3 make the result consistent: removing its borders (`separation_borders`)
    gives `labels` back. Where the truth is ambiguous (a border pixel where the edge meets the
    background looks like background), the pixel pairs at the end of an edge are filled.

    labels: (H, W) int, 0 = background (cells without their borders, e.g. the connected
    components of a 2-class mask). radius: 2 for the 2-px borders of `separation_borders`.
    Returns (H, W), labels' dtype.
    """
    labels = np.asarray(labels)
    background = labels == 0
    if background.all() or not background.any():
        return labels.copy()
    _, (iy, ix) = ndimage.distance_transform_edt(background, return_indices=True)
    two_near = separation_borders(labels, 2 * radius + 1)  # two cells within `radius` px
    filled = background & two_near & ~separation_borders(labels)
    out = labels.copy()
    out[filled] = labels[iy[filled], ix[filled]]  # rules 1, 2: the nearest cell
    while True:  # rule 3, until every filled pixel has a partner of another cell
        lone = filled & ~separation_borders(np.where(filled, out, 0))
        if not lone.any():
            return out
        out[lone] = 0
        filled &= ~lone


def number_row_by_row(labels: np.ndarray) -> np.ndarray:
    """Cell ids made 1..N in order of first appearance row by row (0 = background stays 0), so
    two labellings of the same cells are equal arrays. (H, W) int -> (H, W) int64."""
    ids, first, inverse = np.unique(np.asarray(labels).ravel(), return_index=True,
                                    return_inverse=True)
    cell = np.flatnonzero(ids != 0)
    new = np.zeros(ids.size, np.int64)
    new[cell[np.argsort(first[cell])]] = np.arange(1, cell.size + 1)
    return new[inverse].reshape(np.shape(labels))


def instances_to_mask(instances: np.ndarray) -> np.ndarray:
    """Binary class map of touching instances with the separation borders set to background.

    instances: (H, W) int, 0 = background. Returns (H, W) int64, 1 = cell, 0 = background/border.
    """
    return ((instances > 0) & ~separation_borders(instances)).astype(np.int64)


def class_balance(classes: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """w_c: weight N / (K * n_k) for a pixel of class k, so every present class has the same total.

    classes: (H, W) int class indices. n_classes: K (default: the classes present).
    N = number of pixels, n_k = pixels of class k, K = number of classes present; the weights
    average to 1 over the image. Returns (H, W) float32.
    """
    classes = np.asarray(classes)
    counts = np.bincount(classes.ravel(), minlength=n_classes or 0).astype(np.float64)
    present = counts > 0
    per_class = np.zeros_like(counts)
    per_class[present] = classes.size / (present.sum() * counts[present])
    return per_class[classes].astype(np.float32)


def border_term(
    instances: np.ndarray, w0: float = W0, sigma: float = SIGMA, eps: float = 1e-6
) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels (instances == 0), 0 on cells.

    d1, d2 = Euclidean distance to the nearest pixel of the nearest and the second-nearest cell.
    One EDT per cell, but only inside the cell's bounding box grown by a cutoff D: where d1 + d2 > D
    the term is below eps * w0 (D = sigma * sqrt(2 ln(1/eps)), 26.3 px for sigma = 5, eps = 1e-6)
    and is set to 0, and since d1 <= d2 a pixel whose second-nearest cell lies beyond D has
    d1 + d2 > D. So this is exact up to eps * w0 and costs O(cells * window) instead of
    O(cells * image).
    instances: (H, W) int, 0 = background. Returns (H, W) float32.
    """
    instances = np.asarray(instances)
    h, w = instances.shape
    if instances.size and instances.max() > instances.size:  # sparse huge ids: make them 1..N
        ids, inverse = np.unique(instances, return_inverse=True)
        instances = (inverse + (ids[0] != 0)).reshape(h, w)
    cutoff = sigma * np.sqrt(2.0 * np.log(1.0 / eps))
    pad = int(np.ceil(cutoff)) + 1
    d1 = np.full((h, w), np.inf, np.float32)  # distance to the nearest cell
    d2 = np.full((h, w), np.inf, np.float32)  # distance to the second-nearest cell
    for i, box in enumerate(ndimage.find_objects(instances), start=1):  # loop over cells
        if box is None:
            continue
        ys = slice(max(box[0].start - pad, 0), min(box[0].stop + pad, h))
        xs = slice(max(box[1].start - pad, 0), min(box[1].stop + pad, w))
        d = ndimage.distance_transform_edt(instances[ys, xs] != i).astype(np.float32)
        n1, n2 = d1[ys, xs], d2[ys, xs]  # views: update the two smallest in place
        np.minimum(n2, np.maximum(n1, d), out=n2)
        np.minimum(n1, d, out=n1)
    total = d1 + d2  # inf where fewer than two cells lie within the window
    term = np.zeros((h, w), np.float32)
    near = (instances == 0) & (total <= cutoff)
    term[near] = w0 * np.exp(-(total[near] ** 2) / (2.0 * sigma**2))
    return term


def weight_map(
    classes: np.ndarray,
    instances: np.ndarray | None = None,
    w0: float = W0,
    sigma: float = SIGMA,
    n_classes: int | None = None,
) -> np.ndarray:
    """The paper's weight map w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) (Eq. 2).

    classes:   (H, W) int class map; class 0 is background (membrane for ISBI 2012), > 0 cells.
    instances: (H, W) int instance ids (0 = background), or None for the connected components of
               classes > 0 (4-connectivity), the ISBI 2012 case. For touching instances, pass
               `instances_to_mask(instances)` as classes so separation borders are background.
    Returns (H, W) float32, w_c on every pixel plus the border term on background pixels.
    """
    classes = np.asarray(classes)
    if instances is None:
        instances, _ = ndimage.label(classes > 0, structure=FOUR_CONNECTED)
    else:
        if instances.shape != classes.shape:
            raise ValueError(
                f"instances shape {instances.shape} differs from classes shape {classes.shape}"
            )
        instances = np.where(classes > 0, instances, 0)  # borders/background are not cells
    return class_balance(classes, n_classes) + border_term(instances, w0, sigma)


_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_CACHE_SIZE = 128  # maps of 512x512 float32 are 1 MiB each


def _key(*arrays, params) -> str:
    h = hashlib.sha1(repr(params).encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def cached_weight_map(
    classes: np.ndarray,
    instances: np.ndarray | None = None,
    w0: float = W0,
    sigma: float = SIGMA,
    n_classes: int | None = None,
) -> np.ndarray:
    """`weight_map`, computed once per ground truth: an LRU cache keyed by the arrays' hash.

    Returns a read-only (H, W) float32 array (shared between callers; copy it to modify).
    """
    key = _key(classes, instances, params=(w0, sigma, n_classes))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    wmap = weight_map(classes, instances, w0, sigma, n_classes)
    wmap.setflags(write=False)
    _CACHE[key] = wmap
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return wmap


def plot_weightmap(
    image: np.ndarray,
    truth: np.ndarray,
    weights: np.ndarray,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Draw image, ground truth and weight map side by side into a PNG at `path`.

    Uses a private Agg figure (no pyplot state, no display); written to a temporary file first and
    renamed, so no half-written figure is left behind. image, truth, weights: (H, W).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(12, 4.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(truth, cmap="gray", interpolation="nearest")
    axes[1].set_title("ground truth")
    im = axes[2].imshow(weights, cmap="jet")
    axes[2].set_title("weight map")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
