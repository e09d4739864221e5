"""Data augmentation as in the paper (Ronneberger et al. 2015, Sec. 3.1), composed into one warp.

"We generate smooth deformations using random displacement vectors on a coarse 3 by 3 grid. The
displacements are sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel
displacements are then computed using bicubic interpolation." Plus shift, rotation, flips and
gray-value changes.

Every geometric part (elastic displacement, flips, rotation, shift) is composed into ONE coordinate
map per sample: for every output pixel, the (fractional) position in the source image to read from.
Each array is then sampled once with it: the image with cubic splines (order 3), the labels with
nearest neighbour (order 0, so they stay in their label set), the weight map linearly (order 1).
Positions outside the image read the mirrored image: scipy.ndimage mode 'mirror', which is NumPy's
np.pad(mode='reflect') (d c b | a b c d | c b a, the border pixel is not repeated), the same mirror
that overlap-tile inference uses (`mirror_pad`). Only the source window a tile needs is read, so
the cost scales with the tile, not the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy import ndimage

MIRROR_NDIMAGE = "mirror"  # scipy.ndimage boundary mode used for all sampling
MIRROR_NUMPY = "reflect"  # the same mirror for np.pad


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise. The defaults are the paper's recipe with all augmentations on."""

    elastic: bool = True  # elastic deformation from a coarse random displacement grid (paper)
    elastic_sigma: float = 10.0  # std of the coarse displacement vectors in px (paper: 10)
    elastic_grid: int = 3  # coarse grid points per axis, spanning the tile (paper: 3 by 3)
    rotate: bool = True  # rotation by an angle uniform in [-max_angle, max_angle]
    max_angle: float = 180.0  # degrees; EM sections have no preferred orientation
    flip: bool = True  # up-down and left-right flips, each with probability 1/2
    shift: bool = True  # sub-pixel tile position (False: whole-pixel positions only)
    gamma: tuple[float, float] = (0.8, 1.25)  # gray: x -> x**g, log g uniform in log(range)
    contrast: tuple[float, float] = (0.8, 1.25)  # gray: x -> (x - mean) * c + mean
    brightness: float = 0.1  # gray: x -> x + b, b uniform in [-brightness, brightness]

    @classmethod
    def none(cls) -> AugmentConfig:
        """Every augmentation off: tiles are plain crops (mirror-padded at the borders)."""
        return cls(elastic=False, rotate=False, flip=False, shift=False,
                   gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0)

    def only_geometry(self) -> AugmentConfig:
        """The same geometric augmentation without gray-value changes."""
        return replace(self, gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0)


class Transform(NamedTuple):
    """One random draw of every augmentation parameter (see `draw_transform`)."""

    coarse: np.ndarray  # (2, g, g) elastic displacement (dy, dx) in px at the coarse grid nodes
    angle: float  # rotation in radians
    flip_y: bool  # mirror the rows
    flip_x: bool  # mirror the columns
    gamma: float
    contrast: float
    brightness: float


def draw_transform(rng: np.random.Generator, cfg: AugmentConfig) -> Transform:
    """Draw one set of augmentation parameters from `rng` (a fixed number of draws per field)."""
    g = cfg.elastic_grid
    coarse = rng.normal(0.0, cfg.elastic_sigma, size=(2, g, g))  # paper: N(0, 10 px)
    if not cfg.elastic:
        coarse = np.zeros_like(coarse)
    angle = math.radians(rng.uniform(-cfg.max_angle, cfg.max_angle)) if cfg.rotate else 0.0
    flips = rng.random(2) < 0.5
    log_gamma = rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1]))
    log_contrast = rng.uniform(math.log(cfg.contrast[0]), math.log(cfg.contrast[1]))
    brightness = rng.uniform(-cfg.brightness, cfg.brightness)
    return Transform(
        coarse=coarse,
        angle=angle,
        flip_y=bool(flips[0]) and cfg.flip,
        flip_x=bool(flips[1]) and cfg.flip,
        gamma=math.exp(log_gamma),
        contrast=math.exp(log_contrast),
        brightness=brightness,
    )


def cubic_spline_matrix(n: int, positions: np.ndarray) -> np.ndarray:
    """Matrix M (len(positions), n) of cubic-spline interpolation from n nodes.

    For node values v (n,), M @ v are the values of the interpolating cubic spline (mirror
    boundary, as scipy.ndimage order 3) at `positions` (in node units, 0..n-1). Bicubic
    interpolation of a coarse grid C (gy, gx) is separable: My @ C @ Mx.T, exactly what
    scipy.ndimage.zoom / map_coordinates with order 3 give, at a fraction of the cost.
    """
    positions = np.asarray(positions, np.float64)
    eye = np.eye(n)
    # sampling the 2-D identity at integer columns j interpolates only along rows (a spline
    # reproduces its nodes), so column j of the result is the spline through the unit vector e_j
    rows, cols = np.meshgrid(positions, np.arange(n), indexing="ij")  # (P, n) each
    return ndimage.map_coordinates(eye, [rows, cols], order=3, mode=MIRROR_NDIMAGE)


def elastic_displacement(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel displacement from the coarse grid by bicubic interpolation (paper, Sec. 3.1).

    coarse: (2, gy, gx) displacements (dy, dx) at grid nodes spread evenly over the tile, corner
    nodes on the corner pixels. shape: (H, W) of the tile. Returns (2, H, W) float64.
    """
    _, gy, gx = coarse.shape
    my = cubic_spline_matrix(gy, np.linspace(0, gy - 1, shape[0]))  # (H, gy)
    mx = cubic_spline_matrix(gx, np.linspace(0, gx - 1, shape[1]))  # (W, gx)
    left = my[None] @ coarse  # (1, H, gy) @ (2, gy, gx) -> (2, H, gx)
    return left @ np.ascontiguousarray(mx.T)  # (2, H, gx) @ (gx, W) -> (2, H, W)


def coordinate_map(
    shape: tuple[int, int], center: tuple[float, float], t: Transform | None = None
) -> np.ndarray:
    """Source coordinates for every pixel of an output tile: elastic, then flips, then rotation.

    shape: (h, w) of the tile; center: (y, x) in the source image onto which the tile centre maps.
    For tile pixel p with offset u = p - tile centre: source = center + R(angle) F (u + D(p)).
    Returns (2, h, w) float64 (row, column) coordinates, ready for map_coordinates.
    """
    h, w = shape
    u = np.mgrid[0:h, 0:w].astype(np.float64)  # (2, h, w)
    u[0] -= (h - 1) / 2.0
    u[1] -= (w - 1) / 2.0
    if t is None:
        return u + np.asarray(center, np.float64)[:, None, None]
    if np.any(t.coarse):
        u += elastic_displacement(t.coarse, shape)
    if t.flip_y:
        u[0] *= -1.0
    if t.flip_x:
        u[1] *= -1.0
    if t.angle:
        c, s = math.cos(t.angle), math.sin(t.angle)
        u = np.stack([c * u[0] - s * u[1], s * u[0] + c * u[1]])  # (2, h, w)
    return u + np.asarray(center, np.float64)[:, None, None]


def mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """Map integer positions onto 0..n-1 by mirroring (np.pad 'reflect', ndimage 'mirror')."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


def mirror_pad(image: np.ndarray, pad: int) -> np.ndarray:
    """Mirror-pad the last two axes by `pad` px, the same mirror as every warp here.

    image: (..., H, W). Returns (..., H + 2 pad, W + 2 pad). Works for pad > H too.
    """
    image = np.asarray(image)
    widths = [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)]
    return np.pad(image, widths, mode=MIRROR_NUMPY)


def spline_coefficients(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of an image with mirror boundaries, (H, W) float64.

    Computing them once per image lets every tile skip the prefilter: pass them to
    `warp(..., prefiltered=True)`. The mirror-extended coefficients represent the mirror-extended
    image exactly, so windows of them can be read with `mirror_index` like the image itself.
    """
    return ndimage.spline_filter(np.asarray(image, np.float64), order=3, mode=MIRROR_NDIMAGE)


def warp(
    array: np.ndarray, coords: np.ndarray, order: int, prefiltered: bool = False
) -> np.ndarray:
    """Sample a 2-D array at fractional `coords` (2, h, w) with mirror boundaries.

    order 0 (labels): nearest neighbour by rounding, exact, keeps the dtype.
    order 1 (weights) / 3 (images): scipy.ndimage.map_coordinates on the source window the
    coordinates need, mirror-extended where it leaves the array. For order 3 the window has a
    12 px margin, so the spline prefilter sees the same data as on the whole mirrored image up to
    0.268^12 ~ 1e-7 (the decay of the cubic B-spline prefilter); with prefiltered=True, `array`
    holds `spline_coefficients` and the result is exact. Returns (h, w), float32 for order 1, 3.
    """
    h, w = array.shape
    if order == 0:
        iy = mirror_index(np.rint(coords[0]).astype(np.intp), h)
        ix = mirror_index(np.rint(coords[1]).astype(np.intp), w)
        return array[iy, ix]
    margin = 2 if order == 1 else 12
    y0 = math.floor(coords[0].min()) - margin
    x0 = math.floor(coords[1].min()) - margin
    rows = mirror_index(np.arange(y0, math.ceil(coords[0].max()) + margin + 1), h)
    cols = mirror_index(np.arange(x0, math.ceil(coords[1].max()) + margin + 1), w)
    window = array[np.ix_(rows, cols)]
    if not prefiltered:
        window = window.astype(np.float32, copy=False)
    local = coords - np.array([y0, x0], np.float64)[:, None, None]
    return ndimage.map_coordinates(
        window, local, order=order, mode=MIRROR_NDIMAGE, output=np.float32,
        prefilter=not (prefiltered and order == 3),
    )


def gray_value(image: np.ndarray, t: Transform) -> np.ndarray:
    """Gamma, contrast about the mean, brightness; on [0, 1] images, clipped to [0, 1]."""
    if t.gamma == 1.0 and t.contrast == 1.0 and t.brightness == 0.0:
        return image
    x = np.clip(image, 0.0, 1.0) ** np.float32(t.gamma)
    mean = x.mean()
    x = (x - mean) * np.float32(t.contrast) + mean + np.float32(t.brightness)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def is_integral(coords: np.ndarray) -> bool:
    """True when every coordinate is a whole pixel: sampling is then an exact gather."""
    return bool(np.array_equal(coords, np.rint(coords)))


def augment_sample(
    image: np.ndarray,
    label: np.ndarray | None,
    weights: np.ndarray | None,
    rng: np.random.Generator,
    cfg: AugmentConfig | None = None,
):
    """Augment a whole image with its labels and weight map, all with the same transform.

    image (H, W) float in [0, 1], label (H, W) int or None, weights (H, W) float or None.
    The transform is about the image centre (no shift). Returns (image float32, label, weights)
    of the same shapes (None stays None).
    """
    cfg = AugmentConfig() if cfg is None else cfg
    t = draw_transform(rng, cfg)
    h, w = image.shape
    coords = coordinate_map((h, w), ((h - 1) / 2.0, (w - 1) / 2.0), t)
    order = 0 if is_integral(coords) else 3
    x = warp(np.asarray(image, np.float32), coords, order).astype(np.float32)
    y = None if label is None else warp(label, coords, 0)
    wt = None if weights is None else warp(weights, coords, 0 if order == 0 else 1)
    return gray_value(x, t), y, wt
