"""Built-in synthetic data: EM-like slices with ISBI 2012 conventions, and touching cells.

Two generators, both deterministic by seed, any size, vectorised NumPy/SciPy (no loop over pixels):

- `synthetic_em`: a serial-section EM look-alike (the embedded default data for training). Cells
  from a randomly warped Voronoi tessellation of density-modulated seeds; membranes of varying
  thickness; granular textured interiors; dark mitochondria-like organelles and vesicles INSIDE
  cells, which the label counts as cell (so "dark = membrane" is not enough); blur, uneven
  illumination and noise.
  ISBI 2012 label convention: uint8, 255 = cell interior, 0 = membrane.
- `touching_cells`: blob-shaped cells that touch each other (like the HeLa / PhC-U373 data of the
  paper's Fig. 3): instance labels, the separation borders between touching cells, and the binary
  mask with those borders removed, which is what the weight map (`weightmap.py`) is built for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .augment import cubic_spline_matrix
from .weightmap import fill_separation_borders, number_row_by_row, separation_borders

Seed = int | np.random.SeedSequence | tuple | list

MIN_CORE = 32  # px: touching cells whose core is smaller are dropped (predict's --min-size: 16)
FOUR = ndimage.generate_binary_structure(2, 1)  # cross-shaped 3x3


@dataclass
class SyntheticSample:
    """One synthetic slice.

    image:     (H, W) uint8 gray values, EM-like (dark membranes, bright-ish cells).
    label:     (H, W) uint8, 255 = cell interior, 0 = membrane (ISBI 2012 convention).
    instances: (H, W) int32, 0 = membrane, 1..N = cell id (consecutive).
    """

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray


@dataclass
class SyntheticStack:
    """n synthetic slices: images, labels (n, H, W) uint8 and instances (n, H, W) int32."""

    images: np.ndarray
    labels: np.ndarray
    instances: np.ndarray


@dataclass
class TouchingCells:
    """Touching blob-shaped cells.

    image:     (H, W) uint8, bright cells on a darker background.
    instances: (H, W) int32, 0 = background, 1..N = cell id; touching cells share an edge.
    borders:   (H, W) bool, the separation borders between touching cells (from morphology).
    mask:      (H, W) uint8, 255 = cell, 0 = background or separation border.
    """

    image: np.ndarray
    instances: np.ndarray
    borders: np.ndarray
    mask: np.ndarray


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field of zero mean and unit std with features about `scale` px across.

    White noise on a coarse grid (one value per `scale` px) upsampled with cubic splines: fast for
    any scale, unlike a large Gaussian filter. Returns (H, W) float32.
    """
    h, w = shape
    ch, cw = max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    # separable cubic-spline upsampling; the coarse grid spans the image
    my = cubic_spline_matrix(ch, np.linspace(0, ch - 1, h)).astype(np.float32)  # (H, ch)
    mx = cubic_spline_matrix(cw, np.linspace(0, cw - 1, w)).astype(np.float32)  # (W, cw)
    field = (my @ coarse) @ np.ascontiguousarray(mx.T)  # (H, cw) @ (cw, W) -> (H, W)
    field -= field.mean()
    field /= field.std() + 1e-12
    return field


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Map the ids of `labels` (0 = background kept as 0) to 1..N consecutively. Returns int32."""
    present = np.bincount(labels.ravel()) > 0  # O(pixels), no sort
    present[0] = False
    lut = np.cumsum(present).astype(np.int32)  # old id -> new id; background stays 0
    return lut[labels]


def _voronoi_cells(shape, cell_diameter, rng):
    """Warped Voronoi tessellation of density-modulated random seeds. Returns (H, W) int32 ids."""
    h, w = shape
    n_cells = max(2, int(round(h * w / (np.pi / 4 * cell_diameter**2))))
    # candidate seeds, kept with a probability that follows a smooth density field: regions of
    # small cells (axon bundles) next to regions of large ones, as in the ISBI stack
    density = np.exp(0.7 * smooth_noise(shape, max(h, w) / 3, rng))
    n_cand = 4 * n_cells
    cand = np.stack([rng.uniform(0, h - 1, n_cand), rng.uniform(0, w - 1, n_cand)], axis=1)
    p = density[cand[:, 0].astype(int), cand[:, 1].astype(int)].astype(np.float64)
    seeds = cand[rng.choice(n_cand, size=n_cells, replace=False, p=p / p.sum())]  # (n, 2)
    ids = np.zeros(shape, np.int32)
    ids[seeds[:, 0].astype(int), seeds[:, 1].astype(int)] = np.arange(1, n_cells + 1)
    # nearest seed for every pixel: the Voronoi cells, via the EDT's nearest-feature indices
    _, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    cells = ids[iy, ix]  # (H, W)
    # one Lloyd step (seeds -> cell centroids) rounds off slivers but keeps the size variation
    index = np.unique(cells)  # seeds that fell on the same pixel merged: not every id is left
    centroids = np.array(ndimage.center_of_mass(np.ones(shape), cells, index))  # (n, 2)
    moved = 0.5 * seeds[index - 1] + 0.5 * centroids
    ids[:] = 0
    ids[np.clip(moved[:, 0].round().astype(int), 0, h - 1),
        np.clip(moved[:, 1].round().astype(int), 0, w - 1)] = index
    _, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    cells = ids[iy, ix]
    # domain warp: look the tessellation up at smoothly displaced coordinates -> wavy membranes
    amp, scale = 0.13 * cell_diameter, 0.8 * cell_diameter
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wy = yy + amp * (smooth_noise(shape, scale, rng) + 0.2 * smooth_noise(shape, scale / 3, rng))
    wx = xx + amp * (smooth_noise(shape, scale, rng) + 0.2 * smooth_noise(shape, scale / 3, rng))
    return ndimage.map_coordinates(cells, [wy, wx], order=0, mode="nearest")


def _boundaries(cells: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another id, on both sides of each change. (H, W) bool."""
    b = np.zeros(cells.shape, bool)
    dy = cells[1:, :] != cells[:-1, :]
    dx = cells[:, 1:] != cells[:, :-1]
    b[1:, :] |= dy
    b[:-1, :] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b


def _ellipse(shape, cy, cx, a, b, theta):
    """Coordinates (u along the long axis, v across), normalised radius r of an ellipse patch."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return u, v, np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _mitochondria(img, dist_membrane, cell_diameter, rng):
    """Paint dark elongated organelles with cristae into cell interiors, in place.

    One small patch per organelle (a loop over organelles, not pixels). Each sits where the distance
    to the nearest membrane exceeds its long semi-axis, so it never touches a membrane.
    """
    h, w = img.shape
    n = rng.poisson(h * w / (4.0 * cell_diameter**2))
    free = dist_membrane.copy()
    for _ in range(n):
        a = rng.uniform(0.18, 0.4) * cell_diameter  # long semi-axis
        b = a * rng.uniform(0.4, 0.75)  # short semi-axis
        ok = np.flatnonzero(free > a + 3)
        if ok.size == 0:
            break
        cy, cx = np.unravel_index(ok[rng.integers(ok.size)], free.shape)
        r = int(np.ceil(a)) + 3
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        u, v, rad = _ellipse((y1 - y0, x1 - x0), cy - y0, cx - x0, a, b, rng.uniform(0, np.pi))
        period = rng.uniform(3.0, 5.0)  # cristae spacing (px)
        cristae = 0.5 + 0.5 * np.cos(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        body = 0.45 + 0.25 * cristae  # dark matrix with lighter bands
        rim = np.exp(-(((rad - 1.0) * b / 1.2) ** 2))  # dark outer double membrane
        inside = np.clip((1.0 - rad) * b, 0.0, 1.0)  # anti-aliased interior
        patch = img[y0:y1, x0:x1]
        patch[:] = patch * (1 - inside) + body * patch * inside
        patch *= 1.0 - 0.45 * rim
        free[y0:y1, x0:x1][rad < 1.8] = 0  # no overlapping organelles


def _vesicles(interior_far, rng, density=0.0015):
    """Darkening field of small round vesicles, about 0..1. (H, W) float32.

    A difference of Gaussians around sparse random points: a dark ring with a lighter core, ~5 px.
    """
    impulses = ((rng.random(interior_far.shape) < density) & interior_far).astype(np.float32)
    ring = ndimage.gaussian_filter(impulses, 1.8) - 0.25 * ndimage.gaussian_filter(impulses, 0.9)
    return ring * np.float32(1.0 / 0.0223)  # the ring's peak (2 px from the centre) -> 1


def synthetic_em(
    size: tuple[int, int] | int = (512, 512),
    seed: Seed = 0,
    cell_diameter: float = 42.0,
    noise: float = 0.035,
) -> SyntheticSample:
    """One EM-like slice with its ISBI-style label and instance map.

    size:          (H, W), or one int for a square.
    seed:          anything `np.random.default_rng` takes; the same seed gives the same sample.
    cell_diameter: typical cell diameter in px (the density varies about it across the image).
    noise:         std of the additive Gaussian noise, in units of the [0, 1] gray range.
    Returns SyntheticSample(image (H, W) uint8, label (H, W) uint8 {0, 255},
    instances (H, W) int32).
    """
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 8 or w < 8:
        raise ValueError(f"synthetic_em needs a size of at least 8x8, got {h}x{w}")
    rng = np.random.default_rng(seed)
    shape = (h, w)
    cells = _voronoi_cells(shape, cell_diameter, rng)
    dist = ndimage.distance_transform_edt(~_boundaries(cells)).astype(np.float32)

    # membrane half-thickness varies smoothly along the membranes: 1..3.5 px (label 2..7 px wide)
    half = 1.0 + 2.5 / (1.0 + np.exp(-1.5 * smooth_noise(shape, 1.5 * cell_diameter, rng)))
    membrane = dist <= half
    instances = _relabel(np.where(membrane, 0, cells))
    label = np.where(membrane, 0, 255).astype(np.uint8)

    # interiors: per-cell brightness, granular texture (cytoplasm, microtubules), dark specks
    n = int(cells.max()) + 1
    base = rng.uniform(0.68, 0.82, n).astype(np.float32)[cells]
    fine = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0)
    blotch = smooth_noise(shape, 5.0, rng)
    img = base * (1.0 + 0.1 * fine / (fine.std() + 1e-6) + 0.06 * blotch)
    specks = ndimage.gaussian_filter((rng.random(shape) < 0.004).astype(np.float32), 1.0)
    img *= 1.0 - 4.0 * specks
    img *= 1.0 - 0.25 * _vesicles(dist > half + 4, rng)

    # dark membranes: a soft line a little thinner than the labelled membrane, darker where thick
    depth = rng.uniform(0.55, 0.65)
    line = np.exp(-0.5 * (dist / (0.8 * half)) ** 2)
    img *= 1.0 - depth * line
    _mitochondria(img, dist - half, cell_diameter, rng)

    # optics and acquisition: blur, uneven illumination, noise, gray-level scaling like ISBI 2012
    img = ndimage.gaussian_filter(img, 1.0)
    img *= 1.0 + 0.1 * smooth_noise(shape, max(h, w) / 2, rng)
    img += noise * rng.standard_normal(shape).astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6) * 44.0 + 126.0  # ISBI: mean 126, std 44
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return SyntheticSample(image=image, label=label, instances=instances)


def synthetic_dataset(
    n: int, size: tuple[int, int] | int = (512, 512), seed: int = 0, **kwargs
) -> SyntheticStack:
    """n slices from `synthetic_em`; slice i uses the seed (seed, i), so slices are independent.

    Returns SyntheticStack(images, labels (n, H, W) uint8, instances (n, H, W) int32).
    """
    samples = [synthetic_em(size, seed=(seed, i), **kwargs) for i in range(n)]
    return SyntheticStack(
        images=np.stack([s.image for s in samples]),
        labels=np.stack([s.label for s in samples]),
        instances=np.stack([s.instances for s in samples]),
    )


def settle_cells(cells: np.ndarray, max_rounds: int = 20) -> np.ndarray:
    """Instance labels that their 2-class mask determines (`touching_cells`).

    Removing the separation borders loses information: a pixel where an edge between two cells
    meets the background looks like background, and a thin part of a cell vanishes with its
    borders. Repeat until nothing changes: keep each cell's largest 4-connected core (the cell
    without its borders), drop cores under MIN_CORE px, and give the borders back to the cores
    by `weightmap.fill_separation_borders`. Usually one or two rounds.

    cells: (H, W) int, 0 = background. Returns (H, W) int32, ids 1..N row by row
    (`weightmap.number_row_by_row`, as predict numbers its cells).
    """
    cells = np.asarray(cells)
    for _ in range(max_rounds):
        core = np.where(separation_borders(cells), 0, cells)
        pieces, n = ndimage.label(core > 0, structure=FOUR)
        if n:  # pieces of different cells never touch: the borders lie between them
            size = np.bincount(pieces.ravel())[1:]
            cell = ndimage.maximum(core, pieces, np.arange(1, n + 1)).astype(np.int64)
            order = np.lexsort((-size, cell))  # by cell, the largest piece first
            largest = np.r_[True, cell[order][1:] != cell[order][:-1]]
            keep = np.zeros(n + 1, bool)
            keep[1 + order[largest & (size[order] >= MIN_CORE)]] = True
            core = np.where(keep[pieces], core, 0)
        settled = fill_separation_borders(core, 2)
        if np.array_equal(settled, cells):
            return number_row_by_row(settled).astype(np.int32)
        cells = settled
    raise RuntimeError(f"settle_cells did not settle in {max_rounds} rounds")


def touching_cells(
    size: tuple[int, int] | int = (256, 256),
    seed: Seed = 0,
    n_cells: int | None = None,
    radius: tuple[float, float] = (10.0, 22.0),
    noise: float = 0.05,
) -> TouchingCells:
    """Blob-shaped cells, many of them touching, with their separation borders.

    Each cell is a smooth convex blob: a disc whose radius varies slowly with the angle,
    r(theta) = r (1 + a2 cos(2 theta + p2) + a3 cos(3 theta + p3)) with a2 <= 0.08, a3 <= 0.04
    (small enough to stay convex), cut by its neighbours along the lines of a power diagram
    (a pixel belongs to the cell with the least d^2 - r^2, whose regions are convex polygons),
    so touching cells share a straight edge with no gap. The separation borders are found by
    morphology (`weightmap.separation_borders`) and removed from the binary mask, as in the
    paper's Fig. 3.

    The mask must determine the cells (`settle_cells`): each cell's core (the cell minus its
    borders) is one 4-connected piece of at least `MIN_CORE` pixels, and the border pixels are
    those `weightmap.fill_separation_borders` gives back to the cores. A perfect 2-class
    prediction then implies exactly these instances (tests/test_instances.py).

    size:    (H, W) or one int. n_cells: number of cells (default: about 45% coverage by area).
    radius:  (min, max) cell radius in px. noise: std of additive noise on the [0, 1] image.
    Returns TouchingCells(image uint8, instances int32, borders bool, mask uint8), all (H, W).
    """
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    rng = np.random.default_rng(seed)
    shape = (h, w)
    if n_cells is None:
        mean_area = np.pi * np.mean(np.square(radius))
        n_cells = max(1, int(round(0.45 * h * w / mean_area)))
    centres = np.stack([rng.uniform(0, h, n_cells), rng.uniform(0, w, n_cells)], axis=1)
    radii = rng.uniform(radius[0], radius[1], n_cells)
    amp = rng.uniform(0.0, 1.0, (n_cells, 2)) * np.array([0.08, 0.04])  # a2, a3 per cell
    phase = rng.uniform(0.0, 2 * np.pi, (n_cells, 2))
    # the k nearest centres of every pixel; a pixel goes to the one with the least d^2 - r^2
    k = min(8, n_cells)
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)  # (H*W, 2)
    d, idx = cKDTree(centres).query(pts, k=k)
    d, idx = d.reshape(-1, k), idx.reshape(-1, k)  # (H*W, k)
    rows = np.arange(len(pts))
    owner = idx[rows, np.argmin(d**2 - radii[idx] ** 2, axis=1)]
    dy, dx = (pts - centres[owner]).T
    theta = np.arctan2(dy, dx)
    outline = 1.0 + (amp[owner, 0] * np.cos(2 * theta + phase[owner, 0])
                     + amp[owner, 1] * np.cos(3 * theta + phase[owner, 1]))
    rel = (np.hypot(dy, dx) / (radii[owner] * outline)).reshape(shape)  # <= 1 inside the cell
    instances = settle_cells(np.where(rel <= 1.0, owner.reshape(shape) + 1, 0))
    borders = separation_borders(instances)
    mask = np.where((instances > 0) & ~borders, 255, 0).astype(np.uint8)

    # a simple bright-field look: textured cells, darker nuclei-ish centres, faint cell edges
    img = np.full(shape, 0.3, np.float32)
    cell = instances > 0
    shade = rng.uniform(0.6, 0.85, int(instances.max()) + 1).astype(np.float32)[instances]
    img[cell] = shade[cell]
    nucleus = (rel < 0.45) & cell
    img[nucleus] *= 0.8
    img[borders] *= 0.8
    img *= 1.0 + 0.08 * smooth_noise(shape, 4.0, rng)
    img = ndimage.gaussian_filter(img, 1.0)
    img += noise * rng.standard_normal(shape).astype(np.float32)
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return TouchingCells(image=image, instances=instances, borders=borders, mask=mask)
