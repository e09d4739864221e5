"""Training tiles: random augmented input tiles with the matching label and weight crops.

The unpadded U-Net maps an input tile of in_size to an output of out_size = in_size - 184 (paper
network; 572 -> 388), so a training example is an input tile plus the label and weight map of its
central out_size x out_size part. Tiles near the image border get their missing context by
mirroring (see `augment.py`: ndimage 'mirror' = np.pad 'reflect'), as overlap-tile inference does.

`TileSampler` makes tile k from the seed and k alone, so a run is reproducible, can resume at any
tile, and gives the same tiles with or without its background prefetch thread.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

from .augment import (
    AugmentConfig,
    coordinate_map,
    draw_transform,
    gray_value,
    is_integral,
    spline_coefficients,
    warp,
)
from .weightmap import cached_weight_map

Tile = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check_sizes(in_size: int, out_size: int) -> None:
    if out_size < 1 or in_size < out_size or (in_size - out_size) % 2:
        raise ValueError(
            f"tile sizes in_size={in_size}, out_size={out_size} are invalid: need "
            "in_size >= out_size >= 1 and an even difference (paper network: out = in - 184)"
        )


def random_tile(
    image: np.ndarray,
    label: np.ndarray,
    weights: np.ndarray | None,
    in_size: int,
    out_size: int,
    rng: np.random.Generator,
    augment: AugmentConfig | None = None,
    center: tuple[float, float] | None = None,
    coefficients: np.ndarray | None = None,
) -> Tile:
    """One random training tile, every array transformed by the same coordinate map.

    image:   (H, W) float32 in [0, 1]. label: (H, W) int class map. weights: (H, W) float or None
             (then all ones).
    in_size, out_size: the network's input and output tile sizes (out = in - 184 for the paper).
    rng:     the only source of randomness. augment: AugmentConfig, or None for plain crops.
    center:  (y, x) in the image of the tile centre; default: random such that the (unrotated)
             output window lies inside the image (centred if the image is smaller).
    coefficients: optional `spline_coefficients(image)`, precomputed once per image (faster).
    Returns x (in_size, in_size) float32, labels (out_size, out_size) int64,
            weights (out_size, out_size) float32.
    """
    _check_sizes(in_size, out_size)
    cfg = AugmentConfig.none() if augment is None else augment
    h, w = image.shape
    if label.shape != (h, w) or (weights is not None and weights.shape != (h, w)):
        raise ValueError(
            f"image {image.shape}, label {label.shape} and weights "
            f"{None if weights is None else weights.shape} must have the same shape"
        )
    if center is None:
        center = tuple(_random_center(n, out_size, rng, cfg.shift) for n in (h, w))
    t = draw_transform(rng, cfg)
    coords = coordinate_map((in_size, in_size), center, t)  # (2, in, in)
    off = (in_size - out_size) // 2
    out = coords[:, off : off + out_size, off : off + out_size]  # (2, out, out) central part
    exact = is_integral(coords)  # whole-pixel map: gather exactly, no interpolation
    if exact:
        x = warp(np.asarray(image, np.float32), coords, 0)
    elif coefficients is not None:
        x = warp(coefficients, coords, 3, prefiltered=True)
    else:
        x = warp(np.asarray(image, np.float32), coords, 3)
    x = x.astype(np.float32, copy=False)
    y = warp(label, out, 0).astype(np.int64)
    if weights is None:
        wt = np.ones((out_size, out_size), np.float32)
    else:
        wt = warp(weights, out, 0 if exact else 1).astype(np.float32)
    return gray_value(x, t), y, wt


def _random_center(n: int, out_size: int, rng: np.random.Generator, shift: bool) -> float:
    """Tile centre along one axis: the output window inside [0, n) if it fits, else centred."""
    lo, hi = (out_size - 1) / 2.0, n - 1 - (out_size - 1) / 2.0
    if hi <= lo:
        return (n - 1) / 2.0
    if shift:
        return float(rng.uniform(lo, hi))
    return lo + int(rng.integers(0, int(hi - lo) + 1))  # whole pixels: top-left on the grid


def _fields(sample):
    """(image, label, instances, weights) from a loader Sample or an (image, label[, w]) tuple."""
    if isinstance(sample, tuple | list):
        image, label = sample[0], sample[1]
        weights = sample[2] if len(sample) > 2 else None
        return image, label, None, weights
    return (sample.image, sample.label, getattr(sample, "instances", None),
            getattr(sample, "weights", None))


class TileSampler:
    """Endless stream of augmented training tiles, optionally prefetched by a background thread.

    samples:  sequence of loader `Sample`s (image, label, instances) or (image, label[, weights])
              tuples; images (H, W) float32 in [0, 1], labels (H, W) int class maps.
    in_size, out_size: tile sizes (paper: 572 -> 388). augment: AugmentConfig (None: plain crops).
    seed:     tile k uses np.random.default_rng((seed, k)): image choice, position, augmentation.
    start:    index of the first tile (resume a run at its iteration).
    prefetch: number of tiles a background thread keeps ready (0: none, made on demand).
    use_weights: the paper's weight map (computed once per label, cached) or all ones.

    Each item is (x (1, in, in) float32, labels (out, out) int64, weights (out, out) float32).
    Use as a context manager or call close() to stop the thread.
    """

    def __init__(
        self,
        samples: Sequence,
        in_size: int = 572,
        out_size: int = 388,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        start: int = 0,
        prefetch: int = 0,
        use_weights: bool = True,
        w0: float = 10.0,
        sigma: float = 5.0,
    ):
        _check_sizes(in_size, out_size)
        if len(samples) == 0:
            raise ValueError("TileSampler needs at least one training sample, got none")
        self.in_size, self.out_size = in_size, out_size
        self.augment, self.seed = augment, seed
        self._data = []
        for s in samples:  # weight maps once per ground truth, up front
            image, label, instances, weights = _fields(s)
            if label is None:
                raise ValueError("TileSampler needs labelled samples; one has label None")
            if weights is None and use_weights:
                weights = cached_weight_map(label, instances, w0=w0, sigma=sigma)
            image = np.asarray(image, np.float32)
            coefficients = spline_coefficients(image) if augment is not None else None
            self._data.append((image, np.asarray(label), weights, coefficients))
        self.position = start  # index of the next tile this iterator returns
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._thread = threading.Thread(
                target=self._produce, args=(start,), name="minunet-tiles", daemon=True
            )
            self._thread.start()

    def tile(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tile number k, a pure function of (seed, k): x (1, in, in), labels, weights."""
        rng = np.random.default_rng((self.seed, k))
        image, label, weights, coefficients = self._data[int(rng.integers(len(self._data)))]
        x, y, w = random_tile(image, label, weights, self.in_size, self.out_size, rng,
                              self.augment, coefficients=coefficients)
        return x[None], y, w  # (1, in, in) channel axis for the network

    def _produce(self, k: int) -> None:
        while not self._stop.is_set():
            try:
                item = ("tile", self.tile(k))
            except Exception as exc:  # hand the error to the consumer, then stop
                item = ("error", exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return
            k += 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._queue is None:
            item = self.tile(self.position)
        else:
            if self._stop.is_set():
                raise RuntimeError("TileSampler is closed")
            kind, item = self._queue.get()
            if kind == "error":
                raise item
        self.position += 1
        return item

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n tiles stacked: x (n, 1, in, in), labels (n, out, out), weights (n, out, out)."""
        items = [next(self) for _ in range(n)]
        return tuple(np.stack(a) for a in zip(*items, strict=True))

    def close(self) -> None:
        """Stop and join the prefetch thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()
            self._thread = None

    def __enter__(self) -> TileSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._stop.set()


def tiles_per_second(
    n_tiles: int = 20,
    in_size: int = 572,
    out_size: int = 388,
    augment: AugmentConfig | None = None,
    image_size: int = 512,
    seed: int = 0,
) -> float:
    """Throughput of `random_tile` on synthetic 512x512 slices, all augmentations on by default.

    For the benchmark; returns tiles per second on this CPU in one thread (weight maps are
    precomputed, as in training, and not timed).
    """
    from .synthetic import synthetic_em

    augment = AugmentConfig() if augment is None else augment
    slices = [synthetic_em(image_size, seed=(seed, i)) for i in range(2)]
    data = [
        (s.image.astype(np.float32) / 255.0, (s.label > 0).astype(np.int64)) for s in slices
    ]
    sampler = TileSampler(data, in_size, out_size, augment, seed=seed)
    next(sampler)  # warm-up
    t0 = time.perf_counter()
    for _ in range(n_tiles):
        next(sampler)
    return n_tiles / (time.perf_counter() - t0)


def tiles_report(n_tiles: int = 20) -> str:
    """One line for the benchmark: the tile pipeline's throughput at 572x572, paper augmentation."""
    rate = tiles_per_second(n_tiles)
    return (f"data: {rate:.1f} tiles/s at 572x572 (elastic + rotation + flips + gray), "
            f"{math.ceil(1000 / rate)} ms/tile, one thread")
